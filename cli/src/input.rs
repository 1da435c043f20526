//! Reading input documents the way `opa eval` does: JSON, or YAML when the file says so.

use std::io::Read;
use std::path::Path;

use arbiter_engine::loader::{DocFormat, parse_document, parse_opa_yaml};
use serde_json::Value as Json;

/// Read a JSON (or YAML, by extension) document from a file, or from stdin for `-`.
pub fn read_document(path: &Path) -> Result<Json, String> {
    let (name, text) = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read input from stdin: {e}"))?;
        ("stdin".to_string(), s)
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read input: {e}", path.display()))?;
        (path.display().to_string(), text)
    };
    // OPA's YAML for inputs, as for data.
    match DocFormat::from_name(&name) {
        DocFormat::Yaml => parse_opa_yaml(&name, &text),
        DocFormat::Json => parse_document(&name, &text, DocFormat::Json),
    }
    .map_err(|d| d.to_string())
}
