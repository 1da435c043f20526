use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::authorizer::Authorizer;
use crate::data_ref::DataRef;
use crate::input::InputOptions;
use crate::loader::{PolicySources, SourceFile};
use crate::policy_set::{LoadOptions, PolicySet};
use crate::request::AuthzRequest;

fn load(text: &str) -> Vec<Policy> {
    match parse("p.istio.yaml", text) {
        Ok((p, _)) => p,
        Err(e) => panic!("{e:?}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match parse("p.istio.yaml", text) {
        Ok(_) => panic!("loaded:\n{text}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn warnings(text: &str) -> Vec<String> {
    match parse("p.istio.yaml", text) {
        Ok((_, w)) => w.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("{e:?}"),
    }
}

fn policies(text: &str) -> IstioPolicies {
    IstioPolicies {
        policies: load(text),
        options: IstioOptions::default(),
    }
}

/// A request to `app: httpbin` in namespace `foo`.
fn req<'a>(method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        method,
        path,
        host: crate::path::Host::parse("httpbin.foo", "http"),
        source_ip: "10.0.0.1".into(),
        destination_port: 8000,
        workload_namespace: "foo".into(),
        workload_labels: [("app".to_string(), "httpbin".to_string())].into(),
        ..Request::default()
    }
}

fn from<'a>(mut r: Request<'a>, principal: &str) -> Request<'a> {
    r.principal = principal.into();
    r
}

const HTTPBIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
"#;

#[test]
fn string_matching_is_exact_prefix_suffix_or_presence() {
    assert!(string_match("abc", "abc"));
    assert!(!string_match("abc", "abcd"));
    assert!(string_match("abc*", "abc"));
    assert!(string_match("abc*", "abcd"));
    assert!(!string_match("abc*", "xabc"));
    assert!(string_match("*abc", "xabc"));
    assert!(!string_match("*abc", "abcx"));
    assert!(string_match("*", "x"));
    assert!(!string_match("*", ""), "presence needs a value");
}

#[test]
fn path_templates_follow_the_istio_api_examples() {
    let m = |p: &str, path: &str| path_match(p, path);
    assert!(m("/foo/{*}", "/foo/bar"));
    assert!(!m("/foo/{*}", "/foo/bar/baz"));
    assert!(!m("/foo/{*}", "/foo/"), "{{*}} is one non-empty segment");
    assert!(m("/foo/{**}/", "/foo/bar/"));
    assert!(m("/foo/{**}/", "/foo/bar/baz.txt/"));
    assert!(m("/foo/{**}/", "/foo//"));
    assert!(!m("/foo/{**}/", "/foo/bar"));
    assert!(m("/foo/{*}/bar/{**}", "/foo/buzz/bar/"));
    assert!(m("/foo/{*}/bar/{**}", "/foo/buzz/bar/baz"));
    assert!(!m("/foo/{*}/bar/{**}", "/foo/a/b/bar/baz"));
    for bad in ["/*/baz/{*}", "/**/baz/{*}", "/{**}/foo/{*}", "/foo/{*}.txt"] {
        assert!(template_error(bad).is_some(), "{bad} must be refused");
    }
    for good in ["/foo/{*}", "/foo/{**}/", "/foo/{*}/bar/{**}", "/plain*"] {
        assert_eq!(template_error(good), None, "{good}");
    }
}

#[test]
fn the_reference_example_allows_what_it_lists_and_nothing_else() {
    let p = policies(HTTPBIN);
    let sleep = "cluster.local/ns/default/sa/sleep";
    let v = p.evaluate(&from(req("GET", "/info/x"), sleep));
    assert!(v.allowed);
    assert_eq!(v.decided_by, Some(("foo/httpbin".into(), 0)));
    assert!(p.evaluate(&from(req("POST", "/data"), sleep)).allowed);
    assert!(!p.evaluate(&from(req("POST", "/info"), sleep)).allowed);
    assert!(
        p.evaluate(&from(req("GET", "/info"), "cluster.local/ns/test/sa/any"))
            .allowed
    );
    let other = p.evaluate(&from(req("GET", "/info"), "cluster.local/ns/prod/sa/sleep"));
    assert!(!other.allowed && !other.abstained);
    assert!(
        !p.evaluate(&req("GET", "/info")).allowed,
        "plaintext has no principal"
    );
}

#[test]
fn deny_wins_over_allow_and_names_its_rule() {
    let p = policies(&format!(
        "{HTTPBIN}---\n{}",
        r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/never"]}}]
  - when:
    - key: request.headers[X-Debug]
      values: ["1"]
"#
    ));
    let mut r = from(req("GET", "/info"), "cluster.local/ns/default/sa/sleep");
    r.headers = vec![("x-debug".into(), "1".into())];
    let v = p.evaluate(&r);
    assert!(!v.allowed);
    assert_eq!(v.decided_by, Some(("foo/deny-debug".into(), 1)));
}

#[test]
fn policies_without_rules_match_nothing_and_an_empty_rule_matches_everything() {
    let nothing = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: foo}\nspec: {}\n",
    );
    let v = nothing.evaluate(&req("GET", "/"));
    assert!(!v.allowed && !v.abstained);
    let all = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: foo}\nspec:\n  rules:\n  - {}\n",
    );
    assert!(all.evaluate(&req("DELETE", "/x")).allowed);
    let deny_nothing = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY}\n",
    );
    let v = deny_nothing.evaluate(&req("GET", "/"));
    assert!(v.abstained, "a DENY policy without rules denies nothing");
}

#[test]
fn a_workload_no_allow_policy_selects_is_denied_unless_the_option_says_otherwise() {
    let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-bar, namespace: bar}\nspec:\n  rules:\n  - {}\n";
    let mut p = policies(text);
    let v = p.evaluate(&req("GET", "/"));
    assert!(!v.allowed && v.abstained);
    assert!(
        v.note
            .as_deref()
            .unwrap_or("")
            .contains("no Istio ALLOW policy")
    );
    p.options.allow_without_allow_policies = true;
    let v = p.evaluate(&req("GET", "/"));
    assert!(v.allowed && v.abstained && v.note.is_none());
}

#[test]
fn scope_root_namespace_selector_and_target_refs() {
    let text = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v1-nothing, namespace: istio-system}
spec:
  selector: {matchLabels: {version: v1}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-gets, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc-deny, namespace: foo}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{}]
"#;
    let p = policies(text);
    assert!(p.evaluate(&req("GET", "/")).allowed);
    // The root namespace's allow-nothing selects version v1 everywhere; as an ALLOW policy
    // it adds nothing, but httpbin's still allows GET.
    let mut r = req("GET", "/");
    r.workload_labels.insert("version".into(), "v1".into());
    assert!(p.evaluate(&r).allowed);
    // Another app in foo: no ALLOW policy but the root one selects it (version v1).
    let mut other = req("GET", "/");
    other.workload_labels = [
        ("app".to_string(), "ratings".to_string()),
        ("version".to_string(), "v1".to_string()),
    ]
    .into();
    let v = p.evaluate(&other);
    assert!(!v.allowed && !v.abstained);
    // In another namespace, foo's policies do not apply.
    let mut bar = req("GET", "/");
    bar.workload_namespace = "bar".into();
    assert!(p.evaluate(&bar).abstained);
    // targetRefs: the Service named in the context extensions.
    let mut svc = req("GET", "/");
    svc.workload_labels
        .insert("service".into(), "reviews".into());
    let v = p.evaluate(&svc);
    assert_eq!(v.decided_by, Some(("foo/svc-deny".into(), 0)));
}

#[test]
fn source_fields_namespaces_service_accounts_ips() {
    let text = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: s, namespace: foo}
spec:
  rules:
  - from: [{source: {serviceAccounts: ["default/sleep"]}}]
  - from: [{source: {ipBlocks: ["203.0.113.0/24"], notIpBlocks: ["203.0.113.4"]}}]
  - from: [{source: {namespaces: ["prod*"], notPrincipals: ["*/sa/blocked"]}}]
"#;
    let p = policies(text);
    let ok = |r: Request<'_>| p.evaluate(&r).decided_by.map(|(_, i)| i);
    assert_eq!(
        ok(from(req("GET", "/"), "cluster.local/ns/default/sa/sleep")),
        Some(0)
    );
    assert_eq!(
        ok(from(req("GET", "/"), "cluster.local/ns/default/sa/sleepy")),
        None
    );
    let mut ip = req("GET", "/");
    ip.source_ip = "203.0.113.9".into();
    assert_eq!(ok(ip.clone()), Some(1));
    ip.source_ip = "203.0.113.4".into();
    assert_eq!(ok(ip), None);
    assert_eq!(
        ok(from(req("GET", "/"), "cluster.local/ns/prod-eu/sa/app")),
        Some(2)
    );
    assert_eq!(
        ok(from(req("GET", "/"), "cluster.local/ns/prod-eu/sa/blocked")),
        None
    );
}

#[test]
fn operation_hosts_ports_and_negations() {
    let text = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: o, namespace: foo}
spec:
  rules:
  - to: [{operation: {hosts: ["*.Example.com"], methods: ["GET", "HEAD"], notPaths: ["/admin*"]}}]
  - to: [{operation: {ports: ["9000"]}}]
"#;
    let p = policies(text);
    let mut r = req("GET", "/x");
    r.host = crate::path::Host::parse("api.example.com", "http");
    assert_eq!(p.evaluate(&r).decided_by.map(|d| d.1), Some(0));
    let mut admin = r.clone();
    admin.path = "/admin/x";
    assert!(!p.evaluate(&admin).allowed);
    let mut port = req("PUT", "/x");
    port.destination_port = 9000;
    assert_eq!(p.evaluate(&port).decided_by.map(|d| d.1), Some(1));
}

fn on_host<'a>(host: &str, scheme: &str) -> Request<'a> {
    let mut r = req("GET", "/x");
    r.host = crate::path::Host::parse(host, scheme);
    r
}

/// istiod turns `hosts` into case-insensitive `:authority` matchers (exact, prefix, suffix;
/// `*` present), and Envoy's RBAC filter compares the authority as sent, port included
/// (istio `pilot/pkg/security/authz/matcher/header.go`, `HostMatcher`).
#[test]
fn hosts_match_the_authority_with_its_port() {
    let allow = policies(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop, namespace: foo}
spec:
  rules:
  - to: [{operation: {hosts: ["shop.example.com"]}}]
"#,
    );
    assert!(allow.evaluate(&on_host("shop.example.com", "http")).allowed);
    assert!(allow.evaluate(&on_host("SHOP.example.COM", "http")).allowed);
    // A port is part of the authority: Envoy's exact matcher does not match it.
    assert!(
        !allow
            .evaluate(&on_host("shop.example.com:8080", "http"))
            .allowed
    );
    // Even the scheme's default port, and a trailing dot: Envoy compares what was sent.
    assert!(
        !allow
            .evaluate(&on_host("shop.example.com:80", "http"))
            .allowed
    );
    assert!(
        !allow
            .evaluate(&on_host("shop.example.com.", "http"))
            .allowed
    );

    let deny = policies(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-shop, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {hosts: ["shop.example.com"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all, namespace: foo}
spec:
  rules: [{}]
"#,
    );
    assert!(!deny.evaluate(&on_host("shop.example.com", "http")).allowed);
    // Envoy lets these past the DENY (another spelling); arbiter also matches the canonical
    // spelling in a DENY rule: stricter, never looser.
    assert!(!deny.evaluate(&on_host("shop.example.com.", "http")).allowed);
    assert!(
        !deny
            .evaluate(&on_host("Shop.Example.com:80", "http"))
            .allowed
    );
    // Another port is another origin: the DENY rule does not name it (as in Envoy).
    assert!(
        deny.evaluate(&on_host("shop.example.com:8080", "http"))
            .allowed
    );
}

/// `values: ["*"]` on a header is Envoy's presence match (istiod's `HeaderMatcher`): a header
/// sent with an empty value is present.
#[test]
fn a_header_presence_condition_matches_an_empty_value() {
    let p = policies(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: h, namespace: foo}
spec:
  rules:
  - when: [{key: "request.headers[x-h]", values: ["*"]}]
"#,
    );
    let mut r = req("GET", "/x");
    r.headers = vec![("x-h".into(), String::new())];
    assert!(p.evaluate(&r).allowed, "present with an empty value");
    r.headers = vec![("x-h".into(), "v".into())];
    assert!(p.evaluate(&r).allowed);
    r.headers = vec![("x-other".into(), "v".into())];
    assert!(!p.evaluate(&r).allowed, "absent");
}

/// Envoy 1.40's RBAC filter matches each line of a repeated header on its own (measured:
/// `x-token: admin` + `x-token: second` matches `exact: admin`; one line `admin,second` does
/// not). arbiter sees the lines when Envoy sends `header_map`; from Envoy's comma-joined
/// `headers` it cannot, so a match that takes access away tries every comma-separated run.
#[test]
fn repeated_header_lines_match_as_envoy_rbac_matches_them() {
    let rule = |action: &str| {
        format!(
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: h, namespace: foo}}
spec:
  action: {action}
  rules:
  - when: [{{key: "request.headers[x-token]", values: ["admin"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: other, namespace: foo}}
spec:
  action: ALLOW
  rules:
  - to: [{{operation: {{paths: ["/open"]}}}}]
"#
        )
    };
    let allow = policies(&rule("ALLOW"));
    let deny = policies(&rule("DENY"));
    let mut lines = req("GET", "/x");
    lines.header_lines = true;
    lines.headers = vec![
        ("x-token".into(), "second".into()),
        ("x-token".into(), "admin".into()),
    ];
    assert!(allow.evaluate(&lines).allowed, "any line may match");
    let mut open = lines.clone();
    open.path = "/open";
    assert!(!deny.evaluate(&open).allowed, "any line may match a DENY");

    let mut joined = req("GET", "/open");
    joined.headers = vec![("x-token".into(), "second,admin".into())];
    // Either one line `second,admin` or two lines: a DENY takes the lines it could be.
    assert!(!deny.evaluate(&joined).allowed);
    // An ALLOW grants only on the value as sent: stricter than Envoy for two lines.
    joined.path = "/x";
    assert!(!allow.evaluate(&joined).allowed);
    joined.headers = vec![("x-token".into(), "admin".into())];
    assert!(allow.evaluate(&joined).allowed);
}

#[test]
fn conditions_headers_claims_and_addresses() {
    let text = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c, namespace: foo}
spec:
  rules:
  - when:
    - {key: "request.headers[User-Agent]", values: ["Mozilla/*"]}
    - {key: "request.auth.claims[groups]", values: ["group1"]}
    - {key: "request.auth.claims[nested1][nested2]", values: ["some-value"]}
    - {key: source.ip, values: ["10.0.0.0/8"], notValues: ["10.9.9.9"]}
    - {key: destination.port, values: ["8000"]}
    - {key: request.auth.principal, values: ["issuer.example.com/*"]}
    - {key: request.auth.audiences, values: ["example.com"]}
    - {key: connection.sni, notValues: ["internal.example.com"]}
"#;
    let p = policies(text);
    let claims = json!({"iss": "issuer.example.com", "sub": "subject-admin", "aud": ["example.com"],
        "groups": ["group0", "group1"], "nested1": {"nested2": "some-value"}});
    let mut r = req("GET", "/");
    r.headers = vec![("user-agent".into(), "Mozilla/5.0".into())];
    r.claims = Some(&claims);
    r.request_principal = Some("issuer.example.com/subject-admin".into());
    r.sni = "public.example.com".into();
    assert!(p.evaluate(&r).allowed);
    let mut bad_ip = r.clone();
    bad_ip.source_ip = "10.9.9.9".into();
    assert!(!p.evaluate(&bad_ip).allowed);
    let no_claims =
        json!({"iss": "issuer.example.com", "sub": "subject-admin", "aud": "example.com"});
    let mut r2 = r.clone();
    r2.claims = Some(&no_claims);
    assert!(!p.evaluate(&r2).allowed, "a missing claim matches no value");
    let mut sni = r.clone();
    sni.sni = "internal.example.com".into();
    assert!(!p.evaluate(&sni).allowed);
}

#[test]
fn audit_and_dry_run_policies_mark_without_deciding() {
    let text = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all, namespace: foo}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: profile-audit, namespace: foo}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: ["GET"], paths: ["/user/profile/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-example
  namespace: foo
  annotations: {"istio.io/dry-run": "true"}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/headers"]}}]}]
"#;
    let p = policies(text);
    let v = p.evaluate(&req("GET", "/user/profile/me"));
    assert!(v.allowed);
    assert_eq!(v.audit, vec!["foo/profile-audit".to_string()]);
    assert_eq!(
        v.dry_run,
        Some(DryRun {
            allowed: true,
            decided_by: None
        })
    );
    let v = p.evaluate(&req("GET", "/headers"));
    assert!(v.allowed, "dry-run policies are not enforced");
    assert!(v.audit.is_empty());
    assert_eq!(
        v.dry_run,
        Some(DryRun {
            allowed: false,
            decided_by: Some(("foo/dry-run-example".into(), 0))
        })
    );
}

#[test]
fn load_errors_name_the_file_line_and_problem() {
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\nspec:\n  rules:\n  - from:\n    - source:\n        principal: [a]\n",
    );
    assert!(e[0].starts_with("p.istio.yaml:8:"), "{e:?}");
    assert!(e[0].contains("unknown field `principal`"), "{e:?}");
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/a/sa/b\"]}}]}]\n",
    );
    assert!(e[0].contains("must not start with `spiffe://`"), "{e:?}");
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules: [{to: [{operation: {ports: [\"http\"], paths: [\"/a/{**}/{*}\"]}}]}]\n",
    );
    assert!(
        e.iter().any(|m| m.contains("port `http` is not a number")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("last operator")), "{e:?}");
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/33\"]}}], when: [{key: request.bogus, values: [a]}, {key: source.ip}]}]\n",
    );
    assert!(
        e.iter()
            .any(|m| m.contains("`10.0.0.0/33` is not an IP address")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("unsupported condition key `request.bogus`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("needs `values` or `notValues`")),
        "{e:?}"
    );
    let e = errors(
        "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {}\n",
    );
    assert!(
        e[0].contains("not a security.istio.io/v1 or v1beta1 AuthorizationPolicy"),
        "{e:?}"
    );
    let e = errors("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(e[0].contains("kind `ConfigMap`"), "{e:?}");
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, name: g}]\n",
    );
    assert!(e[0].contains("cannot be used together"), "{e:?}");
    let e = errors(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules: [{from: [{source: {serviceAccounts: [\"a/b\"], principals: [\"c\"]}}]}]\n",
    );
    assert!(
        e[0].contains("`serviceAccounts` cannot be combined"),
        "{e:?}"
    );
}

#[test]
fn lines_count_from_the_start_of_the_file_in_later_documents() {
    let text = format!(
        "{HTTPBIN}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: y}}\nspec:\n  rules:\n  - when:\n    - {{key: request.bogus, values: [a]}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: z}}\nspec:\n  rules:\n  - tos: []\n"
    );
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with(&format!("p.istio.yaml:{}:", line("request.bogus"))),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(&format!(
            "p.istio.yaml:{}:5: `z`: spec.rules[0]: unknown field `tos`",
            line("tos:")
        )),
        "{e:?}"
    );
}

#[test]
fn istio_best_practice_warnings() {
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\nspec:\n  action: ALLOW\n  rules:\n  - to: [{operation: {notPaths: [\"/admin\"]}}]\n",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("only `not…` fields"), "{w:?}");
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\nspec:\n  action: CUSTOM\n  provider: {name: my-authz}\n  rules: [{}]\n",
    );
    assert!(w[0].contains("CUSTOM"), "{w:?}");
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec: {jwtRules: [{issuer: x}]}\n",
    );
    assert!(
        w[0].contains("`RequestAuthentication` `jwt`) is not an AuthorizationPolicy: skipped"),
        "{w:?}"
    );
    // A positive DENY with a negative source is the recommended shape: no warning.
    let w = warnings(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {notNamespaces: [\"foo\"]}}]\n",
    );
    assert!(w.is_empty(), "{w:?}");
}

/// A check from `source` (address, principal) to `destination` with these HTTP attributes.
fn check_request(
    source: (&str, &str),
    destination: Option<(&str, &str)>,
    extensions: &[(&str, &str)],
    http: crate::request::HttpRequest,
) -> AuthzRequest {
    use crate::request::{Address, Peer, SocketAddress};
    let peer = |(address, principal): (&str, &str), port| Peer {
        address: Some(Address::Socket(SocketAddress {
            address: address.into(),
            port_value: port,
            ..SocketAddress::default()
        })),
        principal: principal.into(),
        ..Peer::default()
    };
    AuthzRequest {
        source: Some(peer(source, 5000)),
        destination: destination.map(|d| peer(d, 8000)),
        context_extensions: extensions
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        http: Some(http),
        ..AuthzRequest::default()
    }
}

fn http(method: &str, path: &str, host: &str) -> crate::request::HttpRequest {
    crate::request::HttpRequest {
        method: method.into(),
        path: path.into(),
        host: host.into(),
        ..crate::request::HttpRequest::default()
    }
}

#[test]
fn request_attributes_come_from_the_check() {
    let mut r = check_request(
        ("10.1.2.3", "spiffe://cluster.local/ns/default/sa/sleep"),
        Some(("10.4.5.6", "spiffe://cluster.local/ns/foo/sa/httpbin")),
        &[("app", "httpbin")],
        crate::request::HttpRequest {
            headers: vec![("X-Token".into(), "admin".into())],
            ..http("GET", "/ip?x=1", "HTTPBin.foo:8000")
        },
    );
    r.metadata_context = Some(crate::request::Metadata {
        filter_metadata: vec![(
            "envoy.filters.http.jwt_authn".into(),
            json!({"testing@secure.istio.io": {"iss": "testing@secure.istio.io", "sub": "u1", "groups": ["group1"]}}),
        )],
        typed_filter_metadata: Vec::new(),
    });
    let input = crate::input::build_input(&r, &InputOptions::default()).unwrap();
    let identity = json!({"spiffe_id": "spiffe://cluster.local/ns/default/sa/sleep"});
    let identity = crate::value::from_json(&identity);
    let a = Request::from_check(&r, input.attributes(), Some(&identity));
    assert_eq!(a.principal, "cluster.local/ns/default/sa/sleep");
    assert_eq!(
        a.request_principal.as_deref(),
        Some("testing@secure.istio.io/u1")
    );
    // Istio's hosts see the authority with its port, lower-cased.
    assert_eq!(a.host.authority, "httpbin.foo:8000");
    assert_eq!(a.host.canonical(), "httpbin.foo:8000");
    assert_eq!(a.path, "/ip");
    assert_eq!(a.source_ip, "10.1.2.3");
    assert_eq!(a.destination_port, 8000);
    assert_eq!(a.workload_namespace, "foo", "from destination.principal");
    assert_eq!(
        a.workload_labels.get("app").map(String::as_str),
        Some("httpbin")
    );
    assert!(a.headers.contains(&("x-token".into(), "admin".into())));
    // Without a verified identity there is no principal, whatever Envoy's field says.
    let b = Request::from_check(&r, input.attributes(), None);
    assert_eq!(b.principal, "");
}

fn authorizer(files: &[(&str, &str)], istio: IstioOptions) -> Authorizer {
    let mut sources = PolicySources::default();
    for (name, text) in files {
        let f = SourceFile {
            name: name.to_string(),
            text: text.to_string(),
        };
        if name.ends_with(".rego") {
            sources.rego.push(f);
        } else if name.ends_with(".cel.yaml") {
            sources.cel.push(f);
        } else {
            sources.istio.push(f);
        }
    }
    let set = PolicySet::from_sources(
        &sources,
        &LoadOptions {
            istio,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    )
}

fn check(a: &Authorizer, method: &str, path: &str, ns: &str) -> crate::decision::Decision {
    let r = check_request(
        ("10.1.2.3", ""),
        None,
        &[("namespace", ns), ("app", "httpbin")],
        http(method, path, "httpbin"),
    );
    a.check(&r).decision
}

const DENY_POST: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-post, namespace: foo}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n";
const REGO_GETS: &str = "package envoy.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.method in {\"GET\", \"POST\"}\n";

#[test]
fn combined_with_rego_deny_overrides_and_the_record_names_the_istio_rule() {
    let a = authorizer(
        &[("p.istio.yaml", DENY_POST), ("authz.rego", REGO_GETS)],
        IstioOptions::default(),
    );
    // Istio's DENY decides; Rego would have allowed.
    let d = check(&a, "POST", "/x", "foo");
    assert!(!d.allowed);
    assert_eq!(d.decided_by.len(), 1);
    assert_eq!(d.decided_by[0].policy, "istio:foo/deny-post");
    assert_eq!(d.decided_by[0].rule.as_deref(), Some("rules[0]"));
    // No ALLOW policy selects the workload: Rego decides alone.
    assert!(check(&a, "GET", "/x", "foo").allowed);
    assert!(!check(&a, "DELETE", "/x", "foo").allowed);
    // Istio alone: no ALLOW policy means deny by default, allow with Istio's option.
    let alone = authorizer(&[("p.istio.yaml", DENY_POST)], IstioOptions::default());
    let d = check(&alone, "GET", "/x", "foo");
    assert!(!d.allowed);
    assert_eq!(
        d.result,
        Some(json!({"istio": "no Istio ALLOW policy selects this workload"}))
    );
    let istio_like = authorizer(
        &[("p.istio.yaml", DENY_POST)],
        IstioOptions {
            allow_without_allow_policies: true,
            ..IstioOptions::default()
        },
    );
    assert!(check(&istio_like, "GET", "/x", "foo").allowed);
    assert!(!check(&istio_like, "POST", "/x", "foo").allowed);
}

#[test]
fn an_istio_allow_still_needs_rego_to_allow() {
    let allow_all = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: all, namespace: foo}\nspec: {rules: [{}]}\n";
    let a = authorizer(
        &[("p.istio.yaml", allow_all), ("authz.rego", REGO_GETS)],
        IstioOptions::default(),
    );
    let d = check(&a, "GET", "/x", "foo");
    assert!(d.allowed);
    assert!(d.decided_by.iter().any(|b| b.policy == "istio:foo/all"));
    assert!(
        d.decided_by
            .iter()
            .any(|b| b.policy == "envoy.authz.allow" || b.policy.contains("envoy"))
    );
    assert!(!check(&a, "DELETE", "/x", "foo").allowed, "Rego denies");
}

/// The comma runs of a joined header value, checked against building them one by one, and in
/// linear time for a value of many pieces.
#[test]
fn comma_runs_match_as_the_runs_would() {
    let v = "a,bc,d";
    let runs = ["a", "a,bc", "a,bc,d", "bc", "bc,d", "d"];
    for p in [
        "a", "bc", "a,bc", "bc,d", "d", "c", "b", "a,b", "c,d", "bc*", "b*", "*c", "*c,d", "x",
        "*x", "x*",
    ] {
        let want = runs.iter().any(|r| string_match(p, r));
        assert_eq!(some_run_matches(p, v), want, "{p}");
    }
    let many = vec!["x"; 30_000].join(",");
    let started = std::time::Instant::now();
    assert!(!some_run_matches("admin", &many));
    assert!(some_run_matches("x,x", &many));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
