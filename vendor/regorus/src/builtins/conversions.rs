// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

#![allow(clippy::unseparated_literal_suffix, clippy::pattern_type_mismatch)]

use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::ensure_args_count;
use crate::lexer::Span;
use crate::value::Value;
use crate::*;

use anyhow::{bail, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("to_number", (to_number, 1));
}

fn to_number(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "to_number";
    ensure_args_count(span, name, params, args, 1)?;

    let span = params[0].span();
    Ok(match &args[0] {
        Value::Null => Value::from(0u64),
        Value::Bool(true) => Value::from(1u64),
        Value::Bool(false) => Value::from(0u64),
        Value::Number(_) => args[0].clone(),
        // Eventhough the doc says that strings are converted using strconv.Atoi golang method,
        // in practice strings seems to be read as json numbers. This means that floating point
        // numbers are read and the string representation is limited to what json allows.
        // arbiter patch 12: OPA (strconv.ParseFloat) refuses surrounding white space, which
        // a JSON reader skips.
        // As OPA words them: `nan`, `inf` and `infinity` (any case, signed) parse in Go but are
        // not numbers (a type error); anything else unparsable is strconv's syntax error.
        Value::String(s)
            if matches!(
                s.trim_start_matches(['+', '-']).to_ascii_lowercase().as_str(),
                "nan" | "inf" | "infinity"
            ) =>
        {
            bail!(span.error("to_number: operand 1 must be valid number string but got string"));
        }
        Value::String(s) if s.trim() != s.as_ref() => {
            bail!(span.error(&format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")));
        }
        Value::String(s) => match Value::from_json_str(s) {
            Ok(Value::Number(n)) => Value::Number(n),
            _ => {
                bail!(span.error(&format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")));
            }
        },
        _ => {
            bail!(
                span.error(format!("`{name}` expects bool/number/string/null argument.").as_str())
            );
        }
    })
}
