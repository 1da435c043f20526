//! Built-ins called with arbitrary strings never panic, strict or not (`sprintf("%²d", [1])`
//! did, in a `to_digit(10).expect(..)`): every call is a value, undefined, or an error.
#![no_main]

use std::sync::OnceLock;

use arbiter_engine::{LoadOptions, PolicySet, PolicySources};
use libfuzzer_sys::fuzz_target;

/// Calls over `input.a`, `input.b`, `input.c` (strings). Built-ins whose output grows with a
/// number in the input (`net.cidr_expand`, `numbers.range`) are left out: they are bounded by
/// limits, not by the fuzzer's memory.
const CALLS: &[&str] = &[
    "sprintf(input.a, [input.b, 1, 2.5, null, [1], {\"k\": input.c}])",
    "regex.match(input.a, input.b)",
    "regex.split(input.a, input.b)",
    "regex.find_n(input.a, input.b, -1)",
    "regex.replace(input.b, input.a, input.c)",
    "regex.template_match(input.a, input.b, \"{\", \"}\")",
    "regex.find_all_string_submatch_n(input.a, input.b, -1)",
    "glob.match(input.a, [], input.b)",
    "glob.quote_meta(input.a)",
    "units.parse(input.a)",
    "units.parse_bytes(input.a)",
    "to_number(input.a)",
    "time.parse_ns(input.a, input.b)",
    "time.parse_rfc3339_ns(input.a)",
    "time.parse_duration_ns(input.a)",
    "semver.compare(input.a, input.b)",
    "semver.is_valid(input.a)",
    "net.cidr_contains(input.a, input.b)",
    "net.cidr_merge([input.a, input.b])",
    "base64.decode(input.a)",
    "base64url.decode(input.a)",
    "hex.decode(input.a)",
    "urlquery.decode(input.a)",
    "urlquery.decode_object(input.a)",
    "json.unmarshal(input.a)",
    "json.is_valid(input.a)",
    "io.jwt.decode(input.a)",
    "io.jwt.decode_verify(input.a, {\"secret\": input.b})",
    "strings.replace_n({input.a: input.b}, input.c)",
    "indexof_n(input.a, input.b)",
    "substring(input.a, 1, 3)",
    "split(input.a, input.b)",
    "trim(input.a, input.b)",
    "strings.count(input.a, input.b)",
    "uuid.parse(input.a)",
    "count(input.a)",
    "strings.reverse(input.a)",
    "format_int(count(input.a), 16)",
    "crypto.x509.parse_certificates(input.a)",
];

fn sets() -> &'static [PolicySet; 2] {
    static SETS: OnceLock<[PolicySet; 2]> = OnceLock::new();
    SETS.get_or_init(|| {
        let set = |strict| {
            let options = LoadOptions {
                eval_timeout: None,
                strict_builtin_errors: strict,
                ..LoadOptions::default()
            };
            PolicySet::from_sources(&PolicySources::default(), &options)
                .unwrap_or_else(|e| panic!("an empty set loads: {e}"))
        };
        [set(true), set(false)]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let call = CALLS[usize::from(pick) % CALLS.len()];
    let mut parts = rest.splitn(3, |b| *b == 0xff);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (a, b, c) = (next(), next(), next());
    let input = serde_json::json!({"a": a, "b": b, "c": c});
    for set in sets() {
        let _ = set.query(
            &format!("x := {call}"),
            Some(arbiter_engine::value::from_json(&input)),
        );
    }
});
