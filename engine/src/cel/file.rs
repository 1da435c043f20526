//! The `*.cel.yaml` policy format, validated field by field with errors that name the file and
//! the line:
//!
//! ```yaml
//! name: orders-api
//! match: request.url_path.startsWith("/api/orders")   # optional
//! rules:
//!   - name: block-debug
//!     effect: deny                # allow | deny
//!     when: request.headers["x-debug"] == "1"
//!     status: 429                 # optional; also headers: {…} and body: "…"
//! ```

use serde_json::Value as Json;

use crate::decision::is_envoy_status_code;
use crate::diagnostic::Diagnostic;

/// What a rule does when its condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A rule as written, with where its expression starts in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    pub effect: Effect,
    pub when: String,
    /// 1-based line and column of the `when` expression's first character.
    pub when_at: (u32, u32),
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// A policy file as written.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    pub file: String,
    pub name: String,
    pub match_expr: Option<(String, (u32, u32))>,
    pub rules: Vec<RuleSpec>,
}

const TOP_KEYS: &[&str] = &["name", "match", "rules", "description"];
const RULE_KEYS: &[&str] = &[
    "name",
    "effect",
    "when",
    "status",
    "headers",
    "body",
    "description",
];

/// Parse and validate one file. All problems found are returned.
pub fn parse(file: &str, text: &str) -> Result<FileSpec, Vec<Diagnostic>> {
    let doc: Json = crate::loader::parse_data(&format!("{file}.yaml"), text).map_err(|mut d| {
        d.file = file.to_string();
        vec![d.with_code("cel_parse_error")]
    })?;
    let lines = LineIndex::new(text);
    let mut errors = Vec::new();
    let err = |line: u32, col: u32, msg: String| {
        Diagnostic::at(file, line, col, msg).with_code("cel_policy_error")
    };
    let Json::Object(top) = &doc else {
        return Err(vec![err(
            1,
            1,
            "a CEL policy file must be a mapping".into(),
        )]);
    };
    for k in top.keys() {
        if !TOP_KEYS.contains(&k.as_str()) {
            let (l, c) = lines.top_key(k).unwrap_or((1, 1));
            errors.push(err(
                l,
                c,
                format!(
                    "unknown field `{k}` (expected one of {})",
                    TOP_KEYS.join(", ")
                ),
            ));
        }
    }
    let name = match top.get("name") {
        Some(Json::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => {
            let (l, c) = lines.top_key("name").unwrap_or((1, 1));
            errors.push(err(l, c, "`name` must be a non-empty string".into()));
            String::new()
        }
        None => {
            errors.push(err(1, 1, "missing `name`".into()));
            String::new()
        }
    };
    let match_expr = match top.get("match") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some((s.clone(), lines.top_value("match").unwrap_or((1, 1)))),
        Some(_) => {
            let (l, c) = lines.top_key("match").unwrap_or((1, 1));
            errors.push(err(
                l,
                c,
                "`match` must be a CEL expression (a string)".into(),
            ));
            None
        }
    };
    let mut rules = Vec::new();
    match top.get("rules") {
        Some(Json::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                match rule(file, &lines, i, item) {
                    Ok(r) => {
                        if rules.iter().any(|x: &RuleSpec| x.name == r.name) {
                            let (l, c) = lines.rule_key(i, "name").unwrap_or((1, 1));
                            errors.push(err(l, c, format!("duplicate rule name `{}`", r.name)));
                        }
                        rules.push(r);
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        _ => {
            let (l, c) = lines.top_key("rules").unwrap_or((1, 1));
            errors.push(err(l, c, "`rules` must be a non-empty list".into()));
        }
    }
    if errors.is_empty() {
        Ok(FileSpec {
            file: file.to_string(),
            name,
            match_expr,
            rules,
        })
    } else {
        Err(errors)
    }
}

fn rule(file: &str, lines: &LineIndex, i: usize, item: &Json) -> Result<RuleSpec, Vec<Diagnostic>> {
    let at = |key: &str| {
        lines
            .rule_key(i, key)
            .or_else(|| lines.rule_start(i))
            .unwrap_or((1, 1))
    };
    let err = |key: &str, msg: String| {
        let (l, c) = at(key);
        Diagnostic::at(file, l, c, msg).with_code("cel_policy_error")
    };
    let Json::Object(m) = item else {
        return Err(vec![err("", format!("rule {} must be a mapping", i + 1))]);
    };
    let mut errors = Vec::new();
    for k in m.keys() {
        if !RULE_KEYS.contains(&k.as_str()) {
            errors.push(err(
                k,
                format!(
                    "unknown field `{k}` in a rule (expected one of {})",
                    RULE_KEYS.join(", ")
                ),
            ));
        }
    }
    let name = match m.get("name") {
        Some(Json::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            errors.push(err(
                "name",
                format!("rule {} needs a `name` (a non-empty string)", i + 1),
            ));
            String::new()
        }
    };
    let effect = match m.get("effect").and_then(Json::as_str) {
        Some("allow") => Some(Effect::Allow),
        Some("deny") => Some(Effect::Deny),
        _ => {
            errors.push(err(
                "effect",
                format!("rule `{name}`: `effect` must be `allow` or `deny`"),
            ));
            None
        }
    };
    let when = match m.get("when") {
        Some(Json::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            errors.push(err(
                "when",
                format!("rule `{name}`: `when` must be a CEL expression (a string)"),
            ));
            String::new()
        }
    };
    let status = match m.get("status") {
        None | Some(Json::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(code) if is_envoy_status_code(code) => Some(code),
            _ => {
                errors.push(err(
                    "status",
                    format!(
                        "rule `{name}`: `status` must be an HTTP status Envoy knows, not `{v}`"
                    ),
                ));
                None
            }
        },
    };
    let mut headers = Vec::new();
    match m.get("headers") {
        None | Some(Json::Null) => {}
        Some(Json::Object(h)) => {
            for (k, v) in h {
                match v {
                    Json::String(s) => headers.push((k.to_ascii_lowercase(), s.clone())),
                    other => errors.push(err(
                        "headers",
                        format!("rule `{name}`: header `{k}` must be a string, not `{other}`"),
                    )),
                }
            }
        }
        Some(_) => errors.push(err(
            "headers",
            format!("rule `{name}`: `headers` must be a mapping of names to strings"),
        )),
    }
    let body = match m.get("body") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(err(
                "body",
                format!("rule `{name}`: `body` must be a string"),
            ));
            None
        }
    };
    match (errors.is_empty(), effect) {
        (true, Some(effect)) => Ok(RuleSpec {
            name,
            effect,
            when,
            when_at: lines.rule_value(i, "when").unwrap_or_else(|| at("when")),
            status,
            headers,
            body,
        }),
        _ => Err(errors),
    }
}

/// Finds where keys and values sit in a YAML file, for error positions (YAML parsers report
/// positions of syntax errors only).
struct LineIndex<'a> {
    lines: Vec<&'a str>,
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

fn is_code(l: &str) -> bool {
    let t = l.trim_start();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            lines: text.lines().collect(),
        }
    }

    fn pos(line: usize, col: usize) -> (u32, u32) {
        (
            u32::try_from(line + 1).unwrap_or(u32::MAX),
            u32::try_from(col + 1).unwrap_or(u32::MAX),
        )
    }

    /// A top-level `key:` line.
    fn top_key(&self, key: &str) -> Option<(u32, u32)> {
        let prefix = format!("{key}:");
        self.lines
            .iter()
            .position(|l| indent(l) == 0 && l.starts_with(&prefix))
            .map(|i| Self::pos(i, 0))
    }

    /// Where a top-level key's (scalar) value starts.
    fn top_value(&self, key: &str) -> Option<(u32, u32)> {
        let prefix = format!("{key}:");
        let i = self
            .lines
            .iter()
            .position(|l| indent(l) == 0 && l.starts_with(&prefix))?;
        self.value_after(i, self.lines[i].find(':')? + 1)
    }

    /// The value starting after column `from` on line `i`, or on the next code line for block
    /// scalars (`|`, `>`) and values on their own line.
    fn value_after(&self, i: usize, from: usize) -> Option<(u32, u32)> {
        let line = self.lines[i];
        let rest = &line[from..];
        let trimmed = rest.trim_start();
        if trimmed.is_empty()
            || trimmed.starts_with('|')
            || trimmed.starts_with('>')
            || trimmed.starts_with('#')
        {
            let j = (i + 1..self.lines.len()).find(|j| is_code(self.lines[*j]))?;
            let l = self.lines[j];
            return Some(Self::pos(j, indent(l)));
        }
        let col = from + (rest.len() - trimmed.len());
        // A quoted scalar: the expression starts after the quote.
        let quote = usize::from(trimmed.starts_with('"') || trimmed.starts_with('\''));
        Some(Self::pos(i, col + quote))
    }

    /// The lines of the `i`-th item of the top-level `rules:` list.
    fn rule_lines(&self, i: usize) -> Option<(usize, usize, usize)> {
        let start = self
            .lines
            .iter()
            .position(|l| indent(l) == 0 && l.starts_with("rules:"))?;
        let mut item_indent = None;
        let mut items: Vec<usize> = Vec::new();
        let mut end = self.lines.len();
        for (j, l) in self.lines.iter().enumerate().skip(start + 1) {
            if !is_code(l) {
                continue;
            }
            if indent(l) == 0 {
                end = j;
                break;
            }
            let t = l.trim_start();
            if t.starts_with("- ") || t == "-" {
                let ind = indent(l);
                if item_indent.is_none() {
                    item_indent = Some(ind);
                }
                if item_indent == Some(ind) {
                    items.push(j);
                }
            }
        }
        let first = *items.get(i)?;
        let last = items.get(i + 1).copied().unwrap_or(end);
        Some((first, last, item_indent.unwrap_or(0)))
    }

    fn rule_start(&self, i: usize) -> Option<(u32, u32)> {
        let (first, _, ind) = self.rule_lines(i)?;
        Some(Self::pos(first, ind))
    }

    fn rule_key_line(&self, i: usize, key: &str) -> Option<(usize, usize)> {
        let (first, last, _) = self.rule_lines(i)?;
        let prefix = format!("{key}:");
        (first..last).find_map(|j| {
            let l = self.lines[j];
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            t.starts_with(&prefix).then(|| (j, l.len() - t.len()))
        })
    }

    fn rule_key(&self, i: usize, key: &str) -> Option<(u32, u32)> {
        self.rule_key_line(i, key).map(|(j, c)| Self::pos(j, c))
    }

    fn rule_value(&self, i: usize, key: &str) -> Option<(u32, u32)> {
        let (j, c) = self.rule_key_line(i, key)?;
        self.value_after(j, c + key.len() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"name: orders-api
match: request.url_path.startsWith("/api/orders")   # optional
rules:
  - name: block-debug
    effect: deny                # allow | deny
    when: request.headers["x-debug"] == "1"
    status: 429
  - name: frontend-reads
    effect: allow
    when: >
      source.principal == "spiffe://cluster.local/ns/shop/sa/frontend"
      && request.method == "GET"
"#;

    #[test]
    fn parses_the_documented_format() {
        let f = parse("p.cel.yaml", GOOD).unwrap();
        assert_eq!(f.name, "orders-api");
        assert_eq!(f.match_expr.as_ref().unwrap().1, (2, 8));
        assert_eq!(f.rules.len(), 2);
        assert_eq!(f.rules[0].effect, Effect::Deny);
        assert_eq!(f.rules[0].status, Some(429));
        assert_eq!(f.rules[0].when_at, (6, 11));
        assert_eq!(f.rules[1].when_at, (11, 7));
        assert!(f.rules[1].when.contains("&& request.method"));
    }

    #[test]
    fn every_problem_has_a_line() {
        let bad = "name: x\nrulez: []\nrules:\n  - name: a\n    effect: maybe\n    when: true\n    status: 999\n  - name: a\n    effect: allow\n";
        let errs = parse("bad.cel.yaml", bad).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("bad.cel.yaml:2:1: unknown field `rulez`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("bad.cel.yaml:5:5: rule `a`: `effect`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("bad.cel.yaml:6:5: rule `a`: `when`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("bad.cel.yaml:7:5: rule `a`: `status`")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("rule `a`: `when` must be")),
            "{text:?}"
        );
        let errs = parse("y.cel.yaml", "name: [").unwrap_err();
        assert!(errs[0].message.starts_with("invalid YAML"), "{}", errs[0]);
    }
}
