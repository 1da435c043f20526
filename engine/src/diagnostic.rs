//! Errors for people: every problem found while loading policies names the file, the line and the
//! column, and says what is wrong in one lower-case sentence.

use std::fmt;

/// One problem in one file, at a position when one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (relative paths stay relative).
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based column; 0 when the problem concerns the whole file or line.
    pub col: u32,
    /// What is wrong, without the location.
    pub message: String,
    /// OPA's error code for this kind of problem (`rego_parse_error`, `rego_compile_error`, ...).
    pub code: &'static str,
}

impl Diagnostic {
    /// A problem at a position in a file.
    pub fn at(file: impl Into<String>, line: u32, col: u32, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line,
            col,
            message: message.into(),
            code: "load_error",
        }
    }

    /// The same diagnostic with OPA's error code set.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// A problem with a file as a whole (unreadable, too large, ...).
    pub fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Self::at(file, 0, 0, message)
    }

    /// Build a diagnostic from a regorus error, whose text embeds the location as
    /// `--> file:line:col` followed by a source excerpt and `error: message`.
    ///
    /// When regorus gives no location (for example "could not find function" raised by the
    /// scheduler without a span), `fallback_file` is used with line 0.
    pub fn from_regorus(err: &anyhow::Error, fallback_file: &str) -> Self {
        let text = format!("{err:#}");
        parse_regorus_message(&text).unwrap_or_else(|| {
            let message = first_meaningful_line(&text);
            Diagnostic::file(fallback_file, message)
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.col) {
            (0, _) => write!(f, "{}: {}", self.file, self.message),
            (line, 0) => write!(f, "{}:{}: {}", self.file, line, self.message),
            (line, col) => write!(f, "{}:{}:{}: {}", self.file, line, col, self.message),
        }
    }
}

/// Everything that went wrong while loading a policy set. Loading reports all problems it can
/// find, not just the first, so one `arbiter check` run shows them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    pub fn one(d: Diagnostic) -> Self {
        Self {
            diagnostics: vec![d],
        }
    }
}

impl From<Diagnostic> for LoadError {
    fn from(d: Diagnostic) -> Self {
        Self::one(d)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Parse the `--> file:line:col ... error: message` layout regorus uses.
fn parse_regorus_message(text: &str) -> Option<Diagnostic> {
    let start = text.find("--> ")?;
    let rest = &text[start + 4..];
    let loc_line = rest.lines().next()?;
    // The file name may itself contain ':' (rare); line and col are the last two fields.
    let mut parts = loc_line.rsplitn(3, ':');
    let col: u32 = parts.next()?.trim().parse().ok()?;
    let line: u32 = parts.next()?.trim().parse().ok()?;
    let file = parts.next()?.to_string();
    // The message follows the first "error: " after the excerpt.
    let after = &rest[loc_line.len()..];
    let message = match after.find("error: ") {
        Some(i) => {
            let m = &after[i + 7..];
            // Nested errors repeat the layout; keep only the first message line(s) up to the
            // next location marker.
            let m = m.split("\n--> ").next().unwrap_or(m);
            m.trim().to_string()
        }
        None => first_meaningful_line(text),
    };
    Some(Diagnostic::at(file, line, col, message))
}

fn first_meaningful_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_regorus_layout() {
        let text =
            "\n--> policies/a.rego:3:7\n  |\n3 | allow if {\n  |       ^\nerror: unexpected token";
        let d = parse_regorus_message(text).unwrap();
        assert_eq!(d.file, "policies/a.rego");
        assert_eq!((d.line, d.col), (3, 7));
        assert_eq!(d.message, "unexpected token");
        assert_eq!(d.to_string(), "policies/a.rego:3:7: unexpected token");
    }

    #[test]
    fn display_without_position() {
        let d = Diagnostic::file("x.json", "not an object");
        assert_eq!(d.to_string(), "x.json: not an object");
    }
}
