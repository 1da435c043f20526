//! `regex.globs_match(a, b)`: whether two glob-like patterns have a non-empty string in common
//! (OPA's semantics, from the glob-intersection library it uses). Only `.`, `*`, `+`, `[`, `-`,
//! `]` and `\` are special: a token is one character, `.` (any) or a set `[a-z0-9]`, optionally
//! followed by `*` or `+`.

use regorus::Value;

use super::{Registrar, string_arg};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("regex.globs_match", 2, |a| {
        let x = tokens(string_arg(a, 1)?)?;
        let y = tokens(string_arg(a, 2)?)?;
        Ok(Value::Bool(intersect(&x, &y)))
    });
}

/// The characters one token stands for.
#[derive(Debug, Clone, PartialEq)]
enum Chars {
    Any,
    Ranges(Vec<(char, char)>),
}

impl Chars {
    fn overlaps(&self, other: &Chars) -> bool {
        match (self, other) {
            (Chars::Any, _) | (_, Chars::Any) => true,
            (Chars::Ranges(a), Chars::Ranges(b)) => a
                .iter()
                .any(|(lo, hi)| b.iter().any(|(l, h)| lo <= h && l <= hi)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    chars: Chars,
    /// `*`: zero or more (`+` is read as the token, then the token with `*`).
    repeat: bool,
}

fn invalid(pattern: &str, pos: usize, what: &str) -> anyhow::Error {
    anyhow::anyhow!("input:{pattern}, pos:{pos}, {what}: the input provided is invalid")
}

fn tokens(pattern: &str) -> anyhow::Result<Vec<Token>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out: Vec<Token> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let set = match c {
            '.' => Chars::Any,
            '\\' => {
                i += 1;
                let e = *chars.get(i).ok_or_else(|| {
                    invalid(pattern, i, "escape '\\' with no following character")
                })?;
                Chars::Ranges(vec![(e, e)])
            }
            '[' => {
                let open = i;
                let mut ranges = Vec::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(invalid(
                            pattern,
                            open + 1,
                            "set-open '[' with no closing ']'",
                        ));
                    };
                    match c {
                        ']' => break,
                        _ => {
                            let lo = if c == '\\' {
                                i += 1;
                                *chars.get(i).ok_or_else(|| {
                                    invalid(pattern, i, "escape '\\' with no following character")
                                })?
                            } else {
                                c
                            };
                            if chars.get(i + 1) == Some(&'-')
                                && chars.get(i + 2).is_some_and(|c| *c != ']')
                            {
                                let hi = chars[i + 2];
                                if hi < lo {
                                    return Err(invalid(
                                        pattern,
                                        i + 3,
                                        "range with the end before the start",
                                    ));
                                }
                                ranges.push((lo, hi));
                                i += 3;
                            } else {
                                ranges.push((lo, lo));
                                i += 1;
                            }
                        }
                    }
                }
                if ranges.is_empty() {
                    return Err(invalid(pattern, i + 1, "empty set '[]'"));
                }
                Chars::Ranges(ranges)
            }
            ']' => {
                return Err(invalid(
                    pattern,
                    i + 1,
                    "set-close ']' with no preceding '['",
                ));
            }
            '*' | '+' => {
                return Err(invalid(
                    pattern,
                    i + 1,
                    "quantifier with no preceding character",
                ));
            }
            _ => Chars::Ranges(vec![(c, c)]),
        };
        i += 1;
        match chars.get(i) {
            Some('*') => {
                out.push(Token {
                    chars: set,
                    repeat: true,
                });
                i += 1;
            }
            Some('+') => {
                out.push(Token {
                    chars: set.clone(),
                    repeat: false,
                });
                out.push(Token {
                    chars: set,
                    repeat: true,
                });
                i += 1;
            }
            _ => out.push(Token {
                chars: set,
                repeat: false,
            }),
        }
    }
    Ok(out)
}

/// Whether some non-empty string matches both: a search over pairs of positions (and whether a
/// character was read yet), each step reading one character both tokens admit.
fn intersect(x: &[Token], y: &[Token]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(0usize, 0usize, false)];
    while let Some(state @ (i, j, read)) = todo.pop() {
        if !seen.insert(state) {
            continue;
        }
        if i == x.len() && j == y.len() && read {
            return true;
        }
        if let Some(t) = x.get(i)
            && t.repeat
        {
            todo.push((i + 1, j, read));
        }
        if let Some(t) = y.get(j)
            && t.repeat
        {
            todo.push((i, j + 1, read));
        }
        if let (Some(a), Some(b)) = (x.get(i), y.get(j))
            && a.chars.overlaps(&b.chars)
        {
            let ni = if a.repeat { i } else { i + 1 };
            let nj = if b.repeat { j } else { j + 1 };
            todo.push((ni, nj, true));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    #[test]
    fn globs_intersect_as_in_opa() {
        // OPA's suite, globsmatch.
        assert_eq!(
            eval(r#"regex.globs_match("a.a.[0-9]+z", ".b.b2359825792*594823z")"#).unwrap(),
            json!(true)
        );
        assert_eq!(
            eval(r#"regex.globs_match("[a-z]+", "[0-9]*")"#).unwrap(),
            json!(false)
        );
        assert_eq!(
            eval(r#"regex.globs_match(`[a-z]+\[[0-9]+\]`, "foo\\[1\\]")"#).unwrap(),
            json!(true)
        );
        assert_eq!(
            eval(r#"regex.globs_match(`[a-z]+\[[0-9]+\]`, "foo[\"bar\"]")"#).unwrap(),
            json!(false)
        );
        // Only the empty string in common: no.
        assert_eq!(
            eval(r#"regex.globs_match("a*", "b*")"#).unwrap(),
            json!(false)
        );
        let e = eval(r#"regex.globs_match("pqrs]", "[a-b]+")"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input:pqrs], pos:5, set-close ']' with no preceding '[': the input provided is invalid"),
            "{e}"
        );
    }
}
