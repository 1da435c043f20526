//! The load limits every command that reads policies takes (`--max-data-file-bytes`,
//! `--max-bundle-bytes`, `--max-modules`): the same names as `limits:` in `serve --config`,
//! applied the same way by every loader (`arbiter_engine::limits::LoadLimits`).

use arbiter_engine::limits::{Limits, LoadLimits};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct LoadLimitArgs {
    /// Largest data file (data.json, data.yaml) read from a folder or a bundle [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = arbiter_engine::units::parse_size)]
    pub max_data_file_bytes: Option<u64>,
    /// Largest bundle, its files together uncompressed [default: 256MiB].
    #[arg(long, value_name = "SIZE", value_parser = arbiter_engine::units::parse_size)]
    pub max_bundle_bytes: Option<u64>,
    /// Most policy files (Rego, CEL, Istio, tests) in one set [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_modules: Option<usize>,
}

impl LoadLimitArgs {
    /// The defaults with the flags given.
    pub fn limits(&self) -> LoadLimits {
        let mut l = Limits::default();
        self.apply_to(&mut l);
        l.load()
    }

    /// Override `limits` (from a config file) with the flags given.
    pub fn apply_to(&self, limits: &mut Limits) {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = self.max_data_file_bytes {
            limits.max_data_file_bytes = size(n);
        }
        if let Some(n) = self.max_bundle_bytes {
            limits.max_bundle_bytes = size(n);
        }
        if let Some(n) = self.max_modules {
            limits.max_modules = n;
        }
    }
}
