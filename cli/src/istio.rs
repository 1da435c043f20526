//! `arbiter istio diff OLD NEW`: does a change of Istio AuthorizationPolicies open access, or
//! close it? Decided exactly (see [`arbiter_engine::istio::diff`]), with a request that shows
//! each difference, printed as a decision-test case `arbiter test` can run.

use std::io::Write;
use std::path::PathBuf;

use arbiter_engine::istio::diff::{Answer, Diff, Found, Witness, diff};
use arbiter_engine::istio::{IstioOptions, IstioPolicies};
use serde_json::{Value as Json, json};

use crate::Exit;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Whether some request is allowed by NEW and denied by OLD (new access), or the reverse
    /// (new denials), with a request that shows it; exact, or "unknown" where it cannot be.
    Diff(DiffArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
}

/// When `istio diff` fails (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Some request gains access, or that cannot be ruled out.
    NewAccess,
    /// Any difference, or one that cannot be ruled out.
    Any,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The policies before: a file or folder of AuthorizationPolicies.
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The policies after.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// Istio's root namespace, as `serve --istio-root-namespace`.
    #[arg(long, default_value = "istio-system", value_name = "NS")]
    pub istio_root_namespace: String,
    /// As `serve --istio-allow-without-allow-policies`.
    #[arg(long)]
    pub istio_allow_without_allow_policies: bool,
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Exit 1 when a request gains access (`new-access`) or any decision changes (`any`) —
    /// or when that cannot be ruled out.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub fail_on: Option<FailOn>,
}

pub fn run(cmd: &Command) -> Exit {
    match cmd {
        Command::Diff(a) => run_diff(a, &mut std::io::stdout().lock(), &mut std::io::stderr()),
    }
}

/// The Istio policies under `path`, as `serve` loads them.
fn load(path: &PathBuf, options: &IstioOptions) -> Result<IstioPolicies, String> {
    let sources = arbiter_engine::PolicySources::discover(&[path]).map_err(|e| e.to_string())?;
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for f in &sources.istio {
        match arbiter_engine::istio::parse(&f.name, &f.text) {
            Ok((p, _)) => policies.extend(p),
            Err(e) => errors.extend(e.iter().map(ToString::to_string)),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    Ok(IstioPolicies {
        policies,
        options: options.clone(),
    })
}

pub fn run_diff(a: &DiffArgs, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let options = IstioOptions {
        root_namespace: a.istio_root_namespace.clone(),
        allow_without_allow_policies: a.istio_allow_without_allow_policies,
    };
    let (old, new) = match (load(&a.old, &options), load(&a.new, &options)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(err, "arbiter istio diff: {e}");
            return Exit::Usage;
        }
    };
    let d = diff(&old, &new);
    let text = match a.format {
        Format::Json => format!("{:#}\n", to_json(&d)),
        Format::Pretty => pretty(&d),
    };
    if out.write_all(text.as_bytes()).is_err() {
        return Exit::Usage;
    }
    let open = |x: &Answer| !matches!(x, Answer::None);
    let failed = match a.fail_on {
        None => false,
        Some(FailOn::NewAccess) => open(&d.new_access),
        Some(FailOn::Any) => open(&d.new_access) || open(&d.new_denials),
    };
    if failed { Exit::Failed } else { Exit::Ok }
}

/// The witness as a decision-test case (`arbiter test`'s short form), expecting what `allowed`
/// says.
pub fn test_case(name: &str, w: &Witness, allowed: bool) -> Json {
    let mut request = json!({
        "method": w.method,
        "path": w.path,
        "host": w.host,
        "source_address": w.source_ip,
        "destination_address": w.destination_ip,
        "destination_port": w.destination_port,
    });
    if let Some(p) = &w.principal {
        request["principal"] = json!(p);
    }
    if !w.headers.is_empty() {
        // The short form holds one value per header: repeated lines are joined as Envoy joins
        // them, which a header condition reads as the lines when it restricts access.
        let mut h = serde_json::Map::new();
        for (k, v) in &w.headers {
            match h.get_mut(k) {
                Some(Json::String(s)) => {
                    s.push(',');
                    s.push_str(v);
                }
                _ => {
                    h.insert(k.clone(), json!(v));
                }
            }
        }
        request["headers"] = Json::Object(h);
    }
    let mut ext = serde_json::Map::new();
    ext.insert("namespace".into(), json!(w.namespace));
    for (k, v) in &w.labels {
        ext.insert(k.clone(), json!(v));
    }
    request["context_extensions"] = Json::Object(ext);
    if !w.sni.is_empty() {
        request["sni"] = json!(w.sni);
    }
    json!({"name": name, "request": request, "expect": {"allowed": allowed}})
}

fn found_json(f: &Found, name: &str) -> Json {
    json!({
        "request": f.request,
        "old": f.old,
        "new": f.new,
        "test_case_old": test_case(&format!("{name} (before)"), &f.request, f.old.allowed),
        "test_case_new": test_case(&format!("{name} (after)"), &f.request, f.new.allowed),
    })
}

fn answer_json(a: &Answer, name: &str) -> Json {
    match a {
        Answer::None => json!({"answer": "none"}),
        Answer::Found(f) => {
            let mut j = found_json(f, name);
            j["answer"] = json!("found");
            j
        }
        Answer::Unknown(why) => json!({"answer": "unknown", "because": why}),
    }
}

pub fn to_json(d: &Diff) -> Json {
    json!({
        "new_access": answer_json(&d.new_access, "new access"),
        "new_denials": answer_json(&d.new_denials, "new denial"),
        "requests_tried": d.tried,
    })
}

fn decided(d: &arbiter_engine::istio::diff::Decided) -> String {
    let verdict = if d.allowed { "allowed" } else { "denied" };
    match (&d.policy, d.rule) {
        (Some(p), Some(r)) => format!("{verdict} by {p} rules[{r}]"),
        _ if d.allowed => format!("{verdict} (no ALLOW policy selects the workload)"),
        _ => format!("{verdict} (no rule allowed it)"),
    }
}

fn pretty(d: &Diff) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (title, a, name) in [
        (
            "NEW ACCESS (denied before, allowed now)",
            &d.new_access,
            "new access",
        ),
        (
            "NEW DENIALS (allowed before, denied now)",
            &d.new_denials,
            "new denial",
        ),
    ] {
        match a {
            Answer::None => {
                let _ = writeln!(s, "{title}: none (exact)");
            }
            Answer::Unknown(why) => {
                let _ = writeln!(
                    s,
                    "{title}: unknown — none found, but the policies test what the search cannot enumerate: {}",
                    why.join("; ")
                );
            }
            Answer::Found(f) => {
                let w = &f.request;
                let _ = writeln!(s, "{title}: for example");
                let _ = writeln!(
                    s,
                    "  {} {} (host {}, port {}) from {} at {} to workload {} {}",
                    w.method,
                    w.path,
                    w.host,
                    w.destination_port,
                    w.principal.as_deref().unwrap_or("(no identity)"),
                    w.source_ip,
                    w.namespace,
                    serde_json::to_string(&w.labels).unwrap_or_default()
                );
                for (k, v) in &w.headers {
                    let _ = writeln!(s, "    {k}: {v}");
                }
                let _ = writeln!(s, "  before: {}", decided(&f.old));
                let _ = writeln!(s, "  after:  {}", decided(&f.new));
                let case = test_case(&format!("{name} found by istio diff"), w, f.new.allowed);
                // JSON is YAML: a `*_test.yaml` file takes this list as it is.
                let yaml = serde_json::to_string_pretty(&vec![case]).unwrap_or_default();
                let _ = writeln!(s, "  as a decision test of the new policies (`cases:`):");
                for line in yaml.lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
    }
    let _ = writeln!(s, "({} requests tried)", d.tried);
    s
}
