//! OPA's `--set` syntax (`internal/strvals`, Helm's): `a.b.c=v` assignments separated by
//! commas; `\` escapes the next character; `name[i]` is a list index; `{x,y}` is a list value.
//! Values are typed as OPA types them: `true`/`false`, `null`, decimal integers not starting
//! with `0` (and `0` itself), else strings. With `--set-file`, each value is a file's path and
//! the (trimmed) file's text is the value, always a string.

use serde_json::{Map, Value as Json};

/// How `--set-file` turns a path into its value.
pub type FileReader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// Parse `s` and merge its assignments into `dest` (an object).
pub fn parse_into(s: &str, dest: &mut Json, file: Option<FileReader<'_>>) -> Result<(), String> {
    let chars: Vec<char> = s.chars().collect();
    let mut p = Parser {
        s: &chars,
        i: 0,
        file,
    };
    while p.i < chars.len() {
        let path = p.key_path()?;
        let value = p.value()?;
        set(dest, &path, value)?;
        match p.peek() {
            None => {}
            Some(',') => p.i += 1,
            Some(c) => return Err(format!("unexpected `{c}` after a value in `{s}`")),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

struct Parser<'a, 'f> {
    s: &'a [char],
    i: usize,
    file: Option<FileReader<'f>>,
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    /// `a.b[0].c` up to and including `=`.
    fn key_path(&mut self) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        let mut key = String::new();
        loop {
            match self.peek() {
                None | Some(',') => {
                    return Err(format!("key `{key}` has no value"));
                }
                Some('\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or("a trailing `\\`")?;
                    key.push(c);
                    self.i += 1;
                }
                Some('=') => {
                    self.i += 1;
                    if !key.is_empty() {
                        steps.push(Step::Key(std::mem::take(&mut key)));
                    }
                    if steps.is_empty() {
                        return Err("an empty key".into());
                    }
                    return Ok(steps);
                }
                Some('.') => {
                    self.i += 1;
                    if !key.is_empty() {
                        steps.push(Step::Key(std::mem::take(&mut key)));
                    } else if !matches!(steps.last(), Some(Step::Index(_))) {
                        return Err("an empty key segment".into());
                    }
                }
                Some('[') => {
                    self.i += 1;
                    if !key.is_empty() {
                        steps.push(Step::Key(std::mem::take(&mut key)));
                    }
                    let start = self.i;
                    while self.peek().is_some_and(|c| c != ']') {
                        self.i += 1;
                    }
                    let text: String = self.s[start..self.i].iter().collect();
                    if self.peek() != Some(']') {
                        return Err(format!("`[{text}` is not closed"));
                    }
                    self.i += 1;
                    let n: usize = text
                        .parse()
                        .map_err(|_| format!("`[{text}]` is not a list index"))?;
                    if n > 65_536 {
                        return Err(format!("list index {n} is too large"));
                    }
                    steps.push(Step::Index(n));
                }
                Some(c) => {
                    key.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// A value up to an unescaped `,` (or a `{...}` list).
    fn value(&mut self) -> Result<Json, String> {
        if self.peek() == Some('{') {
            self.i += 1;
            let mut items = Vec::new();
            loop {
                let (text, _) = self.scalar(&[',', '}'])?;
                items.push(self.typed(text)?);
                match self.peek() {
                    Some(',') => self.i += 1,
                    Some('}') => {
                        self.i += 1;
                        return Ok(Json::Array(items));
                    }
                    _ => return Err("a list `{...` is not closed".into()),
                }
            }
        }
        let (text, _) = self.scalar(&[','])?;
        self.typed(text)
    }

    fn scalar(&mut self, stops: &[char]) -> Result<(String, bool), String> {
        let mut out = String::new();
        let mut escaped = false;
        while let Some(c) = self.peek() {
            if c == '\\' {
                self.i += 1;
                out.push(self.peek().ok_or("a trailing `\\`")?);
                self.i += 1;
                escaped = true;
                continue;
            }
            if stops.contains(&c) {
                break;
            }
            out.push(c);
            self.i += 1;
        }
        Ok((out, escaped))
    }

    fn typed(&self, text: String) -> Result<Json, String> {
        if let Some(read) = self.file {
            return read(&text).map(Json::String);
        }
        Ok(typed(&text))
    }
}

/// OPA's `typedVal`.
fn typed(v: &str) -> Json {
    if v.eq_ignore_ascii_case("true") {
        return Json::Bool(true);
    }
    if v.eq_ignore_ascii_case("false") {
        return Json::Bool(false);
    }
    if v.eq_ignore_ascii_case("null") {
        return Json::Null;
    }
    if v == "0" {
        return Json::from(0);
    }
    if !v.starts_with('0')
        && let Ok(n) = v.parse::<i64>()
    {
        return Json::from(n);
    }
    Json::String(v.to_string())
}

fn set(dest: &mut Json, path: &[Step], value: Json) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        *dest = value;
        return Ok(());
    };
    match first {
        Step::Key(k) => {
            if !dest.is_object() {
                *dest = Json::Object(Map::new());
            }
            let Json::Object(m) = dest else {
                return Err("not an object".into());
            };
            let slot = m.entry(k.clone()).or_insert(Json::Null);
            set(slot, rest, value)
        }
        Step::Index(n) => {
            if !dest.is_array() {
                *dest = Json::Array(Vec::new());
            }
            let Json::Array(a) = dest else {
                return Err("not a list".into());
            };
            if a.len() <= *n {
                a.resize(n + 1, Json::Null);
            }
            set(&mut a[*n], rest, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Json {
        let mut v = json!({});
        parse_into(s, &mut v, None).unwrap();
        v
    }

    #[test]
    fn opa_set_lines() {
        assert_eq!(
            parse("plugins.envoy_ext_authz_grpc.addr=:9191"),
            json!({"plugins": {"envoy_ext_authz_grpc": {"addr": ":9191"}}})
        );
        assert_eq!(
            parse("decision_logs.console=true,a.n=10,a.z=0,a.o=007,a.s=null"),
            json!({"decision_logs": {"console": true}, "a": {"n": 10, "z": 0, "o": "007", "s": null}})
        );
        assert_eq!(
            parse(r"services[0].name=acme,services[0].url=http://x\,y,k\.dot=v"),
            json!({"services": [{"name": "acme", "url": "http://x,y"}], "k.dot": "v"})
        );
        assert_eq!(parse("l={a,1,true}"), json!({"l": ["a", 1, true]}));
        assert_eq!(parse("a.b="), json!({"a": {"b": ""}}));
        let mut v = json!({});
        for bad in ["a", "=x", "a..b=1", "a[x]=1", "a[1=2"] {
            assert!(parse_into(bad, &mut v, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_file_values_are_file_contents() {
        let read = |p: &str| -> Result<String, String> {
            if p == "/secrets/token" {
                Ok("0123".into())
            } else {
                Err(format!("{p}: no such file"))
            }
        };
        let mut v = json!({});
        parse_into("s.token=/secrets/token", &mut v, Some(&read)).unwrap();
        assert_eq!(v, json!({"s": {"token": "0123"}}));
        assert!(parse_into("s.t=/nope", &mut v, Some(&read)).is_err());
    }
}
