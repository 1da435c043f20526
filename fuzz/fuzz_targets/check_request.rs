//! Arbitrary bytes as an Envoy `CheckRequest` (reliability.md §4 `check_request`): decoding,
//! conversion, input building and a decision never panic, and an error is never an allow.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn authorizer() -> &'static Authorizer {
    static A: OnceLock<Authorizer> = OnceLock::new();
    A.get_or_init(|| {
        let mut s = PolicySources::default();
        // P-admin: deny /admin and below, allow the rest; plus a body and a header rule.
        s.add_rego(
            "p.rego",
            "package envoy.authz\ndefault allow := false\nallow if { not admin; not input.parsed_body.deny }\nadmin if input.parsed_path[0] == \"admin\"\nadmin if \"admin\" in split(input.attributes.request.http.headers[\"x-role\"], \",\")\n",
        );
        let set = PolicySet::from_sources(&s, &LoadOptions::default()).expect("fixture loads");
        Authorizer::new(Arc::new(set), DataRef::parse("envoy/authz/allow").expect("path"), InputOptions::default())
    })
}

fuzz_target!(|data: &[u8]| {
    // The server's own reading of the bytes. Where prost decodes them too, its message
    // re-encoded (canonical: no repeats, no unknown fields) reads as the same request, so the
    // reading follows prost's rules for repeated, merged and unknown fields.
    let Ok(model) = arbiter_ext_authz::wire::authz_request(data) else { return };
    if let Ok(req) = CheckRequest::decode(data) {
        let again = arbiter_ext_authz::convert::authz_request(&req).expect("prost's message reads back");
        assert_eq!(model, again, "the wire reading and prost's differ");
    }
    let outcome = authorizer().check(&model);
    let d = &outcome.decision;
    assert!(!(d.allowed && d.reason.is_some()), "an allow with a denial reason: {d:?}");
    if d.allowed {
        // An allowed request was canonical, and not under /admin.
        let input = outcome
            .input
            .as_ref()
            .and_then(arbiter_engine::record::RecordInput::document)
            .expect("an allowed request has an input");
        let first = &input["parsed_path"][0];
        assert_ne!(*first, arbiter_engine::regorus::Value::from("admin"));
    }
    // A decision record writes the input from the request: byte for byte what serializing the
    // policies' value gives, the credential headers left out alike.
    if let Ok(reading) = arbiter_engine::input::read_request(&model, &Default::default()) {
        use arbiter_engine::audit::mask::{header_mask, Masked, DEFAULT_MASKED_HEADERS};
        let masked: Vec<String> = DEFAULT_MASKED_HEADERS.iter().map(|s| s.to_string()).collect();
        let doc = reading.document(&model, None);
        let mask = header_mask(&doc, &masked);
        let want = serde_json::to_vec(&Masked { input: &doc, mask: &mask }).expect("a document encodes");
        let mut got = Vec::new();
        assert!(reading.write_document(&model, None, &masked, &mut got), "written");
        assert_eq!(got, want, "the written document differs from the value's");
        assert_eq!(reading.masked_pointers(&model, &masked), mask.erased);
    }
    // Every decision is answered with a `CheckResponse` protobuf reads back.
    let answer = arbiter_ext_authz::response::check_response(
        d,
        arbiter_ext_authz::response::ResponseContext { decision_id: "fuzz", dry_run: false },
    );
    let _ = <envoy_types::pb::envoy::service::auth::v3::CheckResponse as prost::Message>::decode(
        answer.as_slice(),
    )
    .expect("the answer decodes");
});
