//! Guards around the `cel` crate, whose evaluation has no cost limit of its own (the vendored
//! copy adds a step budget and a deadline) and whose parser is known to exhaust memory on some
//! short inputs (cel-rust #306: a 125-byte run of `!` and `(` takes over 1 GB)
//! and to overflow the stack on deep nesting (#212). Expressions are checked before they reach
//! the parser, and the parsed AST is checked before a policy is accepted.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// Longest expression accepted, in bytes.
pub const MAX_EXPR_BYTES: usize = 16 * 1024;
/// Deepest bracket nesting accepted (the parser's own recursion limit is set to this too).
pub const MAX_NESTING: usize = 32;
/// Longest run of unary operators and opening parentheses (`!`, `-`, `(`), ignoring spaces:
/// the shape of the parser's known denial-of-service inputs.
pub const MAX_PREFIX_RUN: usize = 12;
/// Deepest nesting of comprehensions (`all`, `exists`, `map`, `filter`, …).
pub const MAX_COMPREHENSION_NESTING: usize = 3;

/// Check an expression's text before parsing it.
pub fn pre_parse(expr: &str) -> Result<(), String> {
    if expr.len() > MAX_EXPR_BYTES {
        return Err(format!(
            "expression is {} bytes, over the limit of {MAX_EXPR_BYTES}",
            expr.len()
        ));
    }
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    let mut run = 0usize;
    let mut max_run = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for &b in expr.as_bytes() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'"' | b'\'' => {
                quote = Some(b);
                run = 0;
            }
            b'(' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                run += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                run = 0;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                run = 0;
            }
            b'!' | b'-' => run += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => run = 0,
        }
        max_run = max_run.max(run);
    }
    if max_run > MAX_PREFIX_RUN {
        return Err(format!(
            "expression has a run of {max_run} unary operators and opening brackets (limit \
             {MAX_PREFIX_RUN}); refused as a known parser denial-of-service shape"
        ));
    }
    if max_depth > MAX_NESTING {
        return Err(format!(
            "expression nests {max_depth} levels deep, over the limit of {MAX_NESTING}"
        ));
    }
    Ok(())
}

/// An AST problem, at an expression id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AstProblem {
    pub id: u64,
    pub message: String,
}

/// Walk the AST: comprehensions nested deeper than [`MAX_COMPREHENSION_NESTING`]. Names,
/// attributes and types are the checker's ([`super::check`]).
pub fn check_ast(expr: &IdedExpr) -> Vec<AstProblem> {
    let mut problems = Vec::new();
    walk(expr, 0, &mut problems);
    problems
}

fn walk(e: &IdedExpr, compr: usize, out: &mut Vec<AstProblem>) {
    match &e.expr {
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        Expr::Select(s) => walk(&s.operand, compr, out),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, compr, out);
            }
            for a in &c.args {
                walk(a, compr, out);
            }
        }
        Expr::Comprehension(c) => {
            if compr + 1 > MAX_COMPREHENSION_NESTING {
                out.push(AstProblem {
                    id: e.id,
                    message: format!(
                        "comprehensions nest deeper than {MAX_COMPREHENSION_NESTING} levels"
                    ),
                });
                return;
            }
            walk(&c.iter_range, compr, out);
            walk(&c.accu_init, compr, out);
            walk(&c.loop_cond, compr + 1, out);
            walk(&c.loop_step, compr + 1, out);
            walk(&c.result, compr + 1, out);
        }
        Expr::List(l) => {
            for x in &l.elements {
                walk(x, compr, out);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, compr, out);
                    walk(&me.value, compr, out);
                }
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                match &entry.expr {
                    EntryExpr::StructField(f) => walk(&f.value, compr, out),
                    EntryExpr::MapEntry(me) => {
                        walk(&me.key, compr, out);
                        walk(&me.value, compr, out);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_known_parser_bombs() {
        // cel-rust #306: the 31-byte motif repeated four times plus `1`.
        let bomb = format!("{}1", "!!(!!!!!!(!!!!(((((!!(!!(!!!!((".repeat(4));
        assert_eq!(bomb.len(), 125);
        assert!(pre_parse(&bomb).unwrap_err().contains("denial-of-service"));
        // cel-rust #212: deep nesting.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(pre_parse(&deep).unwrap_err().contains("nests 200 levels"));
        assert!(pre_parse(&"a".repeat(MAX_EXPR_BYTES + 1)).is_err());
    }

    #[test]
    fn accepts_ordinary_expressions() {
        for e in [
            r#"request.headers["x-debug"] == "1""#,
            r#"!(request.method in ["GET", "HEAD"]) && size(request.path) > 0"#,
            r#"request.path.startsWith("((((((((((((((((")"#,
            "[[1, 2], [3]].all(l, l.all(x, x > 0))",
        ] {
            assert!(pre_parse(e).is_ok(), "{e}");
        }
    }
}
