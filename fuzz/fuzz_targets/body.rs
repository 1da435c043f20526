//! Body parsing never panics, whatever the bytes and the content type; JSON nesting stays
//! within the limit.
#![no_main]

use arbiter_engine::body::parse_body;
use libfuzzer_sys::fuzz_target;

const TYPES: &[&str] = &[
    "application/json",
    "APPLICATION/JSON; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let ct = TYPES[usize::from(selector) % TYPES.len()];
    let partial = (selector & 0x80 != 0).then_some("true");
    let _ = parse_body(Some(ct), None, partial, body, 64);
});
