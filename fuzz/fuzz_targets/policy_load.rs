//! Loading arbitrary text as a Rego module, a CEL policy or a data document never panics and
//! never overflows the stack: everything is a value or a load error.
#![no_main]

use arbiter_engine::loader::SourceFile;
use arbiter_engine::{LoadOptions, PolicySet, PolicySources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut s = PolicySources::default();
    match kind % 3 {
        0 => s.add_rego("fuzz.rego", text),
        1 => s.cel.push(SourceFile { name: "fuzz.cel.yaml".into(), text: text.into() }),
        _ => match arbiter_engine::loader::parse_data("data.yaml", text) {
            Ok(v) => s.add_data("data.yaml", v),
            Err(_) => return,
        },
    }
    let _ = PolicySet::from_sources(&s, &LoadOptions::default());
});
