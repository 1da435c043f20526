//! gRPC request bodies behind a real Envoy 1.40 (`with_request_body` with `pack_as_bytes`): a
//! real gRPC client (tonic) calls a real gRPC upstream (tonic) through Envoy, arbiter decodes
//! each call's messages with `--proto-descriptor` into `parsed_body`, and the policy
//! (`fixtures/grpc-body/policy.rego`) decides on the message's fields. What arbiter logged as
//! `parsed_body` is compared with what the reference OPA-Envoy 1.7.1 decoded from the same
//! calls (`fixtures/grpc-body/opa-envoy.json`, recorded by `examples/record_grpc_body.rs`):
//! identical where OPA-Envoy decodes the body, and arbiter's documented refusals where it
//! leaves the body unread (a compressed message) or null (a client-streaming call).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use arbiter_conformance::envoy::TempDir;
use arbiter_conformance::grpc_body::{self, Answer};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use serde_json::{Value as Json, json};

fn recorded() -> Json {
    let path = grpc_body::fixtures().join("opa-envoy.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn grpc_messages_are_decoded_into_parsed_body_as_opa_envoy_decodes_them() {
    let dir = TempDir::new("grpc-body").unwrap();
    let pb = dir.0.join("greeter.pb");
    let pool = grpc_body::write_descriptor_set(&pb).unwrap();
    let log = dir.0.join("decisions.log");
    let settings = arbiter_cli::serve::Args {
        policies: vec![grpc_body::fixtures().join("policy.rego")],
        proto_descriptor: Some(pb.clone()),
        ..Default::default()
    }
    .settings()
    .unwrap();
    let authorizer = arbiter_cli::serve::authorizer(&settings).unwrap();

    // The gRPC upstream, on a runtime of its own (the client calls run there too).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(grpc_body::start_upstream()).unwrap();
    let mut h = Harness::start(
        authorizer,
        loopback_config(Some(DecisionLogConfig::to(LogTarget::File(log.clone())))),
        |o| {
            o.upstream = upstream;
            o.with_request_body = grpc_body::WITH_BODY.into();
            o.upstream_cluster_extra = grpc_body::UPSTREAM_HTTP2.into();
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let calls = grpc_body::calls();
    let mut answers: Vec<(&str, Answer)> = Vec::new();
    for call in &calls {
        let a = rt
            .block_on(grpc_body::make_call(h.envoy.port, &pool, call))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", call.name, h.envoy.log_text()));
        answers.push((call.name, a));
    }
    h.stop_arbiter().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let events = arbiter_conformance::harness::read_events(&log).unwrap();
    assert_eq!(events.len(), calls.len(), "{text}");
    let event = |name: &str| -> &Json {
        events
            .iter()
            .find(|e| e["input"]["attributes"]["request"]["http"]["headers"]["x-call"] == name)
            .unwrap_or_else(|| panic!("no event for {name}:\n{text}"))
    };
    let answer = |name: &str| &answers.iter().find(|(n, _)| *n == name).unwrap().1;
    let opa = recorded();
    let opa_call = |name: &str| &opa["calls"][name];

    // Where OPA-Envoy decodes the message, arbiter's parsed_body is the same document, and
    // both decide alike.
    for name in ["every-type", "admin", "all-defaults", "other-user"] {
        let e = event(name);
        assert_eq!(
            e["input"]["parsed_body"],
            opa_call(name)["parsed_body"],
            "{name}: arbiter's parsed_body is OPA-Envoy's"
        );
        assert_eq!(e["input"]["truncated_body"], false, "{name}");
        assert_eq!(
            answer(name).code as i64,
            opa_call(name)["code"].as_i64().unwrap(),
            "{name}: {:?}",
            answer(name)
        );
    }
    // The messages reached the upstream (echoed back) only when the policy allowed them.
    let every = answer("every-type");
    assert_eq!(every.code, tonic::Code::Ok, "{every:?}");
    assert_eq!(
        every.reply.as_ref().unwrap()["userName"],
        "ann",
        "{every:?}"
    );
    assert_eq!(
        event("every-type")["input"]["parsed_body"],
        json!({
            "userName": "ann", "count": "7", "kind": "USER", "tags": ["a", "b"],
            "at": "2026-12-04T10:00:00.500Z", "blob": "AAEC/w==", "labels": {"team": "blue"},
            "inner": {"level": 3, "ratio": 0.25}, "nickname": "annie",
            "big": "18446744073709551615", "flag": true, "maybe": 0
        })
    );
    assert_eq!(answer("admin").code, tonic::Code::PermissionDenied);

    // A compressed message: OPA-Envoy leaves parsed_body null (a policy that denies on a
    // field would not see it); arbiter refuses the body (400, which Envoy answers a gRPC client
    // as INTERNAL) and says why. No input could be built, so the event has none.
    assert_eq!(opa_call("compressed")["parsed_body"], Json::Null);
    let refused: Vec<&Json> = events
        .iter()
        .filter(|e| e["reason"] == "body_parse_error")
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    let e = refused[0];
    assert_eq!(e["allowed"], false, "{e}");
    assert_eq!(e["request"]["path"], "/arbiter.test.Greeter/Hello", "{e}");
    let why = e["error"]["message"].as_str().unwrap();
    assert!(why.contains("grpc-encoding: gzip"), "{why}");
    assert_eq!(answer("compressed").code, tonic::Code::Internal);

    // A client-streaming call: OPA-Envoy gives null; arbiter the messages, in order.
    assert_eq!(opa_call("client-stream")["parsed_body"], Json::Null);
    assert_eq!(
        event("client-stream")["input"]["parsed_body"],
        json!([{"userName": "ann"}, {"userName": "ann", "count": "2"}])
    );
    let stream = answer("client-stream");
    assert_eq!(stream.code, tonic::Code::Ok, "{stream:?}");
    assert_eq!(stream.reply.as_ref().unwrap()["count"], "2");
}
