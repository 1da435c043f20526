use super::*;
use crate::input::{InputOptions, build_input};
use crate::request::{HttpRequest, SocketAddress};

fn policies(files: &[(&str, &str)]) -> Result<CelPolicies, Vec<Diagnostic>> {
    policies_with(files, Some(super::DEFAULT_COST_LIMIT))
}

/// [`policies`] with `cost_limit` steps per evaluation (`None`: only the time limit stops one).
fn policies_with(
    files: &[(&str, &str)],
    cost_limit: Option<u64>,
) -> Result<CelPolicies, Vec<Diagnostic>> {
    let sources: Vec<SourceFile> = files
        .iter()
        .map(|(n, t)| SourceFile {
            name: n.to_string(),
            text: t.to_string(),
        })
        .collect();
    let data = crate::value::from_json(
        &serde_json::json!({"admins": ["spiffe://cluster.local/ns/ops/sa/admin"]}),
    );
    CelPolicies::compile_with_cost_limit(&sources, &data, cost_limit)
}

fn req(method: &str, path: &str, principal: &str, headers: &[(&str, &str)]) -> AuthzRequest {
    AuthzRequest {
        source: Some(Peer {
            address: Some(Address::Socket(SocketAddress {
                address: "10.1.2.3".into(),
                port_value: 5000,
                ..SocketAddress::default()
            })),
            principal: principal.into(),
            ..Peer::default()
        }),
        http: Some(HttpRequest {
            method: method.into(),
            path: path.into(),
            host: "Shop.Example.com".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..HttpRequest::default()
        }),
        ..AuthzRequest::default()
    }
}

fn decide(p: &CelPolicies, r: &AuthzRequest) -> CelVerdict {
    let input = build_input(r, &InputOptions::default()).unwrap();
    p.evaluate(&cel_request(r, &input))
}

/// `r` as CEL reads it, with the input built from it.
fn cel_request<'a>(r: &'a AuthzRequest, input: &'a crate::input::Input) -> CelRequest<'a> {
    CelRequest {
        request: r,
        path: &input.path,
        host: &input.host,
        headers: &input.headers,
        input: Some(&input.value),
        identity: None,
    }
}

const ORDERS: &str = r#"name: orders-api
match: request.url_path.startsWith("/api/orders")
rules:
  - name: block-debug
    effect: deny
    when: request.headers["x-debug"] == "1"
    status: 429
  - name: frontend-reads
    effect: allow
    when: source.principal == "spiffe://cluster.local/ns/shop/sa/frontend" && request.method == "GET"
  - name: admins
    effect: allow
    when: source.principal in data.admins
"#;

#[test]
fn deny_overrides_then_allow_then_deny() {
    let p = policies(&[("orders.cel.yaml", ORDERS)]).unwrap();
    let fe = "spiffe://cluster.local/ns/shop/sa/frontend";
    let v = decide(&p, &req("GET", "/api/orders/1", fe, &[]));
    assert!(v.allowed);
    assert_eq!(v.rule.as_deref(), Some("frontend-reads"));
    assert_eq!(v.file.as_deref(), Some("orders.cel.yaml"));
    // A header that was not sent reads as "": no has() guard needed, no error.
    assert!(v.errors.is_empty(), "{:?}", v.errors);

    let v = decide(&p, &req("GET", "/api/orders/1", fe, &[("x-debug", "1")]));
    assert!(!v.allowed);
    assert_eq!(v.rule.as_deref(), Some("block-debug"));
    assert_eq!(v.status, Some(429));

    let v = decide(&p, &req("DELETE", "/api/orders/1", fe, &[]));
    assert!(!v.allowed);
    assert_eq!(v.rule, None);

    // data is bound once and visible to every rule.
    let v = decide(
        &p,
        &req(
            "DELETE",
            "/api/orders/1",
            "spiffe://cluster.local/ns/ops/sa/admin",
            &[],
        ),
    );
    assert!(v.allowed);
    assert_eq!(v.rule.as_deref(), Some("admins"));

    // `match` false: the file does not apply, nothing allows.
    let v = decide(&p, &req("GET", "/api/products", fe, &[]));
    assert!(!v.allowed);
}

#[test]
fn errors_deny_in_deny_rules_and_never_allow() {
    let p = policies(&[(
        "e.cel.yaml",
        r#"name: errors
rules:
  - name: bad-deny
    effect: deny
    when: int(request.headers["x-n"]) > 5
  - name: bad-allow
    effect: allow
    when: int(request.headers["x-m"]) > 5
  - name: fine
    effect: allow
    when: request.method == "GET"
"#,
    )])
    .unwrap();
    // x-n is not a number: the deny rule errors and counts as matching.
    let v = decide(&p, &req("GET", "/x", "", &[("x-n", "many")]));
    assert!(!v.allowed);
    assert_eq!(v.rule.as_deref(), Some("bad-deny"));
    assert_eq!(v.errors.len(), 1, "{:?}", v.errors);
    // The allow rule errors and does not match; another allow rule still can.
    let v = decide(&p, &req("POST", "/x", "", &[("x-n", "1"), ("x-m", "lots")]));
    assert!(!v.allowed, "{v:?}");
    let v = decide(&p, &req("GET", "/x", "", &[("x-n", "1"), ("x-m", "lots")]));
    assert!(v.allowed);
}

#[test]
fn vocabulary_and_helpers() {
    let p = policies(&[(
        "v.cel.yaml",
        r#"name: vocab
rules:
  - name: all
    effect: allow
    when: >
      request.host == "shop.example.com" && request.path == "/api/v1/items?a=1" &&
      request.url_path == "/api/v1/items" && request.query == "a=1" &&
      source.address == "10.1.2.3" && source.port == 5000 && destination.principal == "" &&
      connection.mtls && path.glob("/api/*/items", request.url_path) &&
      net.cidr_contains("10.0.0.0/8", source.address) &&
      spiffe.match(source.principal, "spiffe://td/ns/*/sa/**") &&
      spiffe.parse(source.principal).trust_domain == "td" &&
      input.parsed_path == ["api", "v1", "items"] && identity.spiffe_id == ""
"#,
    )])
    .unwrap();
    let v = decide(
        &p,
        &req("GET", "/api/v1/items?a=1", "spiffe://td/ns/a/sa/b", &[]),
    );
    assert!(v.allowed, "{v:?}");
    assert!(p.uses().input && p.uses().request && !p.uses().identity || p.uses().identity);
}

fn load_error(text: &str) -> String {
    let errs = policies(&[("bad.cel.yaml", text)]).unwrap_err();
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn rule_with(when: &str) -> String {
    format!("name: bad\nrules:\n  - name: r\n    effect: allow\n    when: '{when}'\n")
}

#[test]
fn bad_cel_is_a_load_error_with_a_location() {
    let e = load_error(&rule_with("request.method == "));
    assert!(e.starts_with("bad.cel.yaml:5:"), "{e}");
    assert!(e.contains("syntax error"), "{e}");

    let e = load_error(&rule_with("requets.method == \"GET\""));
    assert!(
        e.starts_with("bad.cel.yaml:5:12: undeclared variable `requets`"),
        "{e}"
    );

    let e = load_error(&rule_with("request.methdo == \"GET\""));
    assert!(e.contains("`request` has no attribute `methdo`"), "{e}");

    let e = load_error(&rule_with("request.size + \"x\" == 1"));
    assert!(e.contains("type error"), "{e}");

    let e = load_error(&rule_with("nosuchfn(request.method)"));
    assert!(e.contains("nosuchfn"), "{e}");

    // The parser-bomb shape and deep nesting never reach the parser.
    let bomb = format!("{}1", "!!(!!!!!!(!!!!(((((!!(!!(!!!!((".repeat(4));
    let e = load_error(&rule_with(&bomb));
    assert!(e.contains("denial-of-service"), "{e}");
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let e = load_error(&rule_with(&deep));
    assert!(e.starts_with("bad.cel.yaml:5:"), "{e}");
    assert!(e.contains("nests 200 levels"), "{e}");

    let e = load_error(&rule_with(
        "[[[[1]]]].all(a, a.all(b, b.all(c, c.all(d, d > 0))))",
    ));
    assert!(e.contains("comprehensions nest deeper"), "{e}");
}

#[test]
fn deny_rules_on_exact_paths_are_warnings() {
    let p = policies(&[(
        "deny.cel.yaml",
        "name: d\nrules:\n  - name: no-admin\n    effect: deny\n    when: request.url_path == \"/admin\"\n  - name: no-admin-tree\n    effect: deny\n    when: path.glob(\"/admin/**\", request.url_path)\n  - name: health\n    effect: allow\n    when: request.path == \"/healthz\"\n",
    )])
    .unwrap();
    let w = p.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].file.as_str(), w[0].line), ("deny.cel.yaml", 5));
    assert!(w[0].message.contains("no-admin"), "{}", w[0].message);
}

/// Issue 16, finding 1: a rule whose work grows with the request (a comprehension inside a
/// comprehension over the query's parts) is stopped at the time limit, and the request is
/// denied (`limit_exceeded:time`) instead of holding the thread for seconds.
#[test]
fn a_runaway_rule_is_stopped_at_the_time_limit() {
    // No step budget: in an optimized build on an idle machine the default one runs out
    // before 50 ms do, and this is about the clock.
    let mut p = policies_with(
        &[(
            "dup.cel.yaml",
            r#"name: dup
rules:
  - name: duplicate-parameter
    effect: deny
    when: request.query.split("&").exists(a, request.query.split("&").filter(b, b == a).size() > 1)
  - name: all
    effect: allow
    when: "true"
"#,
        )],
        None,
    )
    .unwrap();
    p.set_time_limit(Some(std::time::Duration::from_millis(50)));
    let query: Vec<String> = (0..8000).map(|i| format!("k{i}=v")).collect();
    let r = req("GET", &format!("/x?{}", query.join("&")), "", &[]);
    let input = build_input(&r, &InputOptions::default()).unwrap();
    let started = std::time::Instant::now();
    let v = p.evaluate(&cel_request(&r, &input));
    let took = started.elapsed();
    assert!(v.timed_out, "{v:?}");
    assert!(!v.allowed);
    // Without the limit this runs for minutes in a debug build; the bound is generous.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    // A small request is decided as usual by the same rules.
    let small = req("GET", "/x?a=1&b=2", "", &[]);
    assert!(decide(&p, &small).allowed);
    let dup = req("GET", "/x?a=1&a=1", "", &[]);
    let v = decide(&p, &dup);
    assert!(!v.allowed && !v.timed_out, "{v:?}");
}

/// Issue 16, finding 5: a deny rule comparing a header with "" is a load warning (a missing
/// header and an empty one read alike); the presence test is not.
#[test]
fn a_deny_rule_comparing_a_header_with_empty_is_a_warning() {
    let p = policies(&[(
        "h.cel.yaml",
        r#"name: h
rules:
  - name: no-token
    effect: deny
    when: request.headers["x-token"] == ""
  - name: present
    effect: deny
    when: '!("x-token" in request.headers)'
  - name: all
    effect: allow
    when: "true"
"#,
    )])
    .unwrap();
    let w: Vec<String> = p.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("rule `no-token` compares a header with \"\""),
        "{w:?}"
    );
    // And the presence form tells the two apart.
    let missing = req("GET", "/x", "", &[]);
    let empty = req("GET", "/x", "", &[("x-token", "")]);
    assert!(!decide(&p, &missing).allowed);
    assert!(!decide(&p, &empty).allowed, "empty: the first rule denies");
}

/// Issue 16, finding 5: a deny rule matching the raw `request.path` is a load warning that
/// names `request.url_path`.
#[test]
fn a_deny_rule_on_the_raw_path_is_a_warning() {
    let p = policies(&[(
        "p.cel.yaml",
        r#"name: p
rules:
  - name: internal
    effect: deny
    when: request.path.startsWith("/internal")
  - name: internal-canonical
    effect: deny
    when: request.url_path.startsWith("/internal")
  - name: glob
    effect: deny
    when: path.glob("/admin/**", request.path)
  - name: all
    effect: allow
    when: "true"
"#,
    )])
    .unwrap();
    let w: Vec<String> = p.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("rule `internal` matches `request.path`"),
        "{w:?}"
    );
    assert!(w[1].contains("rule `glob` matches `request.path`"), "{w:?}");
    assert!(w[0].contains("request.url_path"), "{w:?}");
}

/// `cel.bind` and the two-variable comprehensions over data (a map from the data document,
/// not a CEL literal) and over a list from it.
#[test]
fn bindings_and_two_variable_comprehensions_read_data() {
    let text = r#"name: grants
rules:
  - name: granted
    effect: allow
    when: data.grants.exists(id, methods, id == source.principal && request.method in methods)
  - name: broad
    effect: allow
    when: >-
      cel.bind(counts, data.grants.transformMap(id, m, m.size()),
        counts[source.principal] >= 3 && data.grants[source.principal].all(i, m, i < 3 && m != ""))
"#;
    let sources = vec![SourceFile {
        name: "g.cel.yaml".into(),
        text: text.into(),
    }];
    let data = crate::value::from_json(&serde_json::json!({"grants": {
        "spiffe://cluster.local/ns/shop/sa/frontend": ["GET"],
        "spiffe://cluster.local/ns/ops/sa/admin": ["GET", "PUT", "DELETE"],
    }}));
    let p = CelPolicies::compile(&sources, &data).unwrap();
    let fe = "spiffe://cluster.local/ns/shop/sa/frontend";
    let admin = "spiffe://cluster.local/ns/ops/sa/admin";
    let v = decide(&p, &req("GET", "/x", fe, &[]));
    assert!(v.allowed && v.errors.is_empty(), "{v:?}");
    assert_eq!(v.rule.as_deref(), Some("granted"));
    assert!(!decide(&p, &req("PUT", "/x", fe, &[])).allowed);
    let v = decide(&p, &req("POST", "/x", admin, &[]));
    assert!(v.allowed && v.errors.is_empty(), "{v:?}");
    assert_eq!(v.rule.as_deref(), Some("broad"));
    assert_eq!(
        decide(&p, &req("PUT", "/x", admin, &[])).rule.as_deref(),
        Some("granted")
    );
}

/// The checker's vocabulary (`check::VOCABULARY`) names exactly the attributes the variables
/// are built with: an attribute the checker accepted but the request lacks would read as `""`
/// in silence. (`identity` is the identity document's, bound only with an identity.)
#[test]
fn the_checked_vocabulary_is_the_bound_one() {
    for (var, fields) in super::check::VOCABULARY {
        if fields.is_empty() || *var == "identity" {
            continue;
        }
        let names: Vec<String> = fields.iter().map(|(f, _)| format!("\"{f}\"")).collect();
        let list = names.join(", ");
        let when = format!("{var}.all(k, k in [{list}]) && [{list}].all(f, f in {var})");
        let p = policies(&[(
            "v.cel.yaml",
            &format!("name: v\nrules:\n  - name: same\n    effect: allow\n    when: '{when}'\n"),
        )])
        .unwrap_or_else(|e| panic!("{var}: {e:?}"));
        let v = decide(&p, &req("GET", "/x", "spiffe://td/ns/a/sa/b", &[]));
        assert!(v.allowed && v.errors.is_empty(), "{var}: {v:?}");
    }
}

/// `cel.block`, as cel-go's optimizer writes it, in a rule: each slot evaluated once, later
/// slots reading earlier ones; the type checker reads through it.
#[test]
fn cel_block_in_a_rule() {
    let p = policies(&[(
        "b.cel.yaml",
        "name: b\nrules:\n  - name: api\n    effect: allow\n    when: cel.block([request.url_path.split(\"/\"), cel.index(0).size()], cel.index(1) > 2 && cel.index(0)[1] == \"api\")\n",
    )])
    .unwrap();
    assert!(decide(&p, &req("GET", "/api/v1", "", &[])).allowed);
    assert!(!decide(&p, &req("GET", "/web/v1", "", &[])).allowed);
    let e = load_error(&rule_with("cel.block([request.method], cel.index(0) == 1)"));
    assert!(
        e.contains("found no matching overload for '_==_' applied to '(string, int)'"),
        "{e}"
    );
}

/// The network extension on the caller's address: `cidr(…).containsIP(source.address)` and
/// an address's class; a malformed range is a denial with the extension's error, not a match.
#[test]
fn network_extension_on_the_source_address() {
    let p = policies(&[(
        "n.cel.yaml",
        r#"name: network
rules:
  - name: bad-range
    effect: deny
    when: request.headers["x-range"] != "" && cidr(request.headers["x-range"]).containsIP(source.address)
  - name: internal
    effect: allow
    when: cidr('10.0.0.0/8').containsIP(source.address) && ip(source.address).family() == 4 && ip(source.address).isGlobalUnicast()
"#,
    )])
    .unwrap();
    let caller = "spiffe://cluster.local/ns/shop/sa/frontend";
    let v = decide(&p, &req("GET", "/x", caller, &[]));
    assert!(v.allowed && v.errors.is_empty(), "{v:?}");
    assert_eq!(v.rule.as_deref(), Some("internal"));
    let v = decide(&p, &req("GET", "/x", caller, &[("x-range", "10.1.0.0/16")]));
    assert!(!v.allowed);
    assert_eq!(v.rule.as_deref(), Some("bad-range"));
    let v = decide(&p, &req("GET", "/x", caller, &[("x-range", "10.1.0.0/")]));
    assert!(!v.allowed && v.errored, "{v:?}");
    assert!(
        v.errors
            .iter()
            .any(|e| e.contains("network address parse error")),
        "{:?}",
        v.errors
    );
}

/// Backtick-escaped field names, for keys that are not identifiers (Kubernetes labels).
#[test]
fn escaped_field_names_read_keys_that_are_not_identifiers() {
    let sources = vec![SourceFile {
        name: "l.cel.yaml".into(),
        text: "name: labels\nrules:\n  - name: app\n    effect: allow\n    when: has(data.labels.`app.kubernetes.io/name`) && data.labels.`app.kubernetes.io/name` == \"shop\" && !has(data.labels.`x-y`)\n".into(),
    }];
    let data =
        crate::value::from_json(&serde_json::json!({"labels": {"app.kubernetes.io/name": "shop"}}));
    let p = CelPolicies::compile(&sources, &data).unwrap();
    let v = decide(
        &p,
        &req("GET", "/x", "spiffe://cluster.local/ns/a/sa/b", &[]),
    );
    assert!(v.allowed && v.errors.is_empty(), "{v:?}");
}

/// Qualified names (`data.authz`) resolve in the innermost scope that has any of them, and
/// within a scope the longest name wins (cel-go's rule). cel patch 8 resolves names without
/// building the longer ones when none can exist; these cases hold on both of its paths.
#[test]
fn qualified_names_resolve_as_cel_go_does_on_both_paths() {
    use std::collections::HashMap;
    let env = Arc::new(cel::Env::stdlib());
    let eval = |ctx: &cel::Context, text: &str| -> cel::Value {
        let program = env.compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        program
            .execute(ctx)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    };
    let map = |v: i64| HashMap::from([("authz".to_string(), v)]);
    let mut root = cel::Context::with_env(env.clone());
    root.add_variable("data", map(1)).unwrap();
    // No dotted names anywhere: the quick path.
    assert_eq!(eval(&root, "data.authz"), cel::Value::Int(1));
    assert_eq!(
        eval(&root, "[{'authz': 2}].exists(data, data.authz == 2)"),
        cel::Value::Bool(true),
        "a comprehension's variable shadows the root's"
    );
    let mut inner = root.new_inner_scope();
    inner.add_variable("data", map(4)).unwrap();
    assert_eq!(eval(&inner, "data.authz"), cel::Value::Int(4));
    let unknown = env.compile("nothing.here").unwrap().execute(&root);
    assert!(
        matches!(unknown, Err(cel::ExecutionError::UndeclaredReference(ref n)) if n.as_str() == "nothing"),
        "an unknown name is an undeclared reference: {unknown:?}"
    );

    // A variable named `data.authz`: the longest name wins in its scope...
    root.add_variable("data.authz", 3).unwrap();
    assert_eq!(eval(&root, "data.authz"), cel::Value::Int(3));
    // ...but an inner scope that has `data` decides first.
    let mut inner = root.new_inner_scope();
    inner.add_variable("data", map(4)).unwrap();
    assert_eq!(eval(&inner, "data.authz"), cel::Value::Int(4));
    // An inner scope without it, made under a root with a dotted name, is not plain either
    // (cel patch 13 keeps that per scope): the root's longest name still wins.
    let empty = root.new_inner_scope();
    assert_eq!(eval(&empty, "data.authz"), cel::Value::Int(3));
    assert_eq!(
        eval(&empty, "[0].map(x, data.authz)"),
        cel::Value::List(Arc::new(vec![cel::Value::Int(3)]))
    );
}

/// cel patch 13: a scope's variables are searched in order, then through an index past 16
/// names; binding a name again replaces its value on either side; a function called on a
/// qualified name (`a.b.f(...)`) is found whether its name is spelled on the stack or, past
/// 64 bytes or 8 segments, on the heap.
#[test]
fn scope_variables_and_qualified_function_names() {
    let mut env = cel::Env::stdlib();
    let long = format!("{}.f", ["n"; 9].join("."));
    let wide = format!("w.{}.f", "x".repeat(70));
    for (name, id) in [
        ("a.b.f", "ab_f"),
        (long.as_str(), "long_f"),
        (wide.as_str(), "wide_f"),
    ] {
        env.add_overload(name, id, vec![cel::common::types::INT_TYPE], |args| {
            let n = args[0]
                .downcast_ref::<cel::common::types::CelInt>()
                .map_or(0, |i| *i.inner());
            Ok(cel::common::value::CowVal::owned(
                cel::common::types::CelInt::from(n + 1),
            ))
        })
        .unwrap();
    }
    let env = Arc::new(env);
    let eval = |ctx: &cel::Context, text: &str| -> cel::Value {
        let program = env.compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        program
            .execute(ctx)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    };
    let mut root = cel::Context::with_env(env.clone());
    for count in [3_i64, 40] {
        for i in 0..count {
            root.add_variable(format!("v{i}"), i).unwrap();
        }
        for i in 0..count {
            assert_eq!(
                eval(&root, &format!("v{i}")),
                cel::Value::Int(i),
                "{count}: v{i}"
            );
        }
        root.add_variable("v2", 100).unwrap();
        root.add_variable_named("v1", Box::new(cel::common::types::CelInt::from(200)));
        assert_eq!(eval(&root, "v1 + v2"), cel::Value::Int(300), "{count}");
    }
    let mut inner = root.new_inner_scope();
    inner.add_variable_named("v2", Box::new(cel::common::types::CelInt::from(-1)));
    assert_eq!(eval(&inner, "v2 + v39"), cel::Value::Int(38));
    assert_eq!(
        eval(&inner, "[5, 6].map(v2, v2 + v1)"),
        eval(&root, "[205, 206]")
    );

    assert_eq!(eval(&root, "a.b.f(1)"), cel::Value::Int(2));
    assert_eq!(eval(&root, &format!("{}(2)", long)), cel::Value::Int(3));
    assert_eq!(eval(&root, &format!("{}(3)", wide)), cel::Value::Int(4));
    // `a.b.g` names no function: a call of `g` on the value `a.b`, undeclared here.
    let other = env.compile("a.b.g(1)").unwrap().execute(&root);
    assert!(other.is_err(), "{other:?}");
}

/// One file with one allow rule, `when`.
fn one(when: &str) -> CelPolicies {
    policies(&[(
        "a.cel.yaml",
        &format!("name: a\nrules:\n  - name: r\n    effect: allow\n    when: '{when}'\n"),
    )])
    .unwrap()
}

#[test]
fn only_the_request_attributes_read_are_built() {
    let bits = |fields: &[&str]| {
        fields.iter().fold(0u16, |m, f| {
            m | 1 << REQUEST_FIELDS.iter().position(|x| x == f).unwrap()
        })
    };
    // Attributes selected directly: those alone, `has()` included (every attribute is present,
    // so `has(request.body)` holds only when `body` was built).
    let p = one("request.method == \"GET\" && has(request.body) && request.headers[\"x\"] == \"\"");
    assert!(p.uses().request);
    assert_eq!(
        p.uses().request_fields,
        bits(&["method", "body", "headers"])
    );
    let get = req("GET", "/a", "", &[]);
    assert!(decide(&p, &get).allowed);
    assert!(!decide(&p, &req("POST", "/a", "", &[])).allowed);
    // `request` used whole: every attribute.
    for whole in [
        "request.size() > 3",
        "\"method\" in request",
        "request[\"method\"] == \"GET\"",
    ] {
        let p = one(whole);
        assert_eq!(p.uses().request_fields, u16::MAX, "{whole}");
        assert!(decide(&p, &get).allowed, "{whole}");
    }
    // No `request` at all.
    let p = one("source.principal == \"\"");
    assert!(!p.uses().request);
    assert_eq!(p.uses().request_fields, 0);
}

/// `source.<attribute>` and `destination.<attribute>` alone build those attributes; any other
/// use builds the map whole. Both decide alike.
#[test]
fn only_the_peer_attributes_read_are_built() {
    let bits = |fields: &[&str]| {
        fields.iter().fold(0u8, |m, f| {
            m | 1 << PEER_FIELDS.iter().position(|x| x == f).unwrap()
        })
    };
    let by_field = "source.principal.startsWith(\"spiffe://\") && has(source.port) && destination.address != \"10.9.9.9\"";
    let p = one(by_field);
    let u = p.uses();
    assert!(u.source && u.destination);
    assert_eq!(u.source_fields, bits(&["principal", "port"]));
    assert_eq!(u.destination_fields, bits(&["address"]));
    let whole = one(&format!(
        "{by_field} && size(source) >= 0 && size(destination) >= 0"
    ));
    assert_eq!(whole.uses().source_fields, u8::MAX);
    assert_eq!(whole.uses().destination_fields, u8::MAX);
    let requests = [
        req("GET", "/a", "spiffe://cluster.local/ns/a/sa/b", &[]),
        req("GET", "/a", "", &[]),
        req("GET", "/a", "user@example", &[]),
    ];
    for r in &requests {
        let (lean, full) = (decide(&p, r), decide(&whole, r));
        assert_eq!(lean.allowed, full.allowed, "{r:?}");
        assert_eq!(lean.errors, full.errors, "{r:?}");
    }
    assert!(decide(&p, &requests[0]).allowed);
    assert!(!decide(&p, &requests[1]).allowed);
    // Any other use: every attribute.
    for other in [
        "size(source) > 0",
        "\"principal\" in source",
        "source[\"principal\"] == \"\"",
        "[source][0].principal == \"\"",
        "source.exists(k, k == \"port\")",
    ] {
        assert_eq!(one(other).uses().source_fields, u8::MAX, "{other}");
    }
    // Not used: no map.
    assert!(!one("request.method == \"GET\"").uses().source);
}

/// `request.headers["name"]` alone builds a map of the headers named, not of every header;
/// any other use of `request.headers` builds it whole. Both decide alike.
#[test]
fn only_the_headers_read_by_name_are_built() {
    let by_name = "request.headers[\"x-a\"] == \"1\" && !(request.headers[\"x-b\"] == \"2\") && request.method == \"GET\"";
    let p = one(by_name);
    assert_eq!(
        p.headers_read(),
        Some(&["x-a".to_string(), "x-b".to_string()][..])
    );
    // The same rule with the map read whole besides: the same decisions.
    let whole = one(&format!("{by_name} && size(request.headers) >= 0"));
    assert_eq!(whole.headers_read(), None);
    let requests = [
        req("GET", "/a", "", &[("x-a", "1")]),
        req("GET", "/a", "", &[("x-a", "1"), ("x-b", "2")]),
        req("GET", "/a", "", &[("x-a", "2"), ("x-c", "1")]),
        req("GET", "/a", "", &[("X-A", "1"), ("other", "x")]),
        req("GET", "/a", "", &[("x-a", "0"), ("x-a", "1")]),
        req("GET", "/a", "", &[("x-a", "1"), ("x-a", "0")]),
        req("POST", "/a", "", &[("x-a", "1")]),
        req("GET", "/a", "", &[]),
    ];
    let mut allowed = 0;
    for r in &requests {
        let (lean, full) = (decide(&p, r), decide(&whole, r));
        assert_eq!(lean.allowed, full.allowed, "{r:?}");
        assert_eq!(lean.errors, full.errors, "{r:?}");
        allowed += usize::from(lean.allowed);
    }
    assert!(allowed >= 2, "the rule allows some of them");
    // Any other use of the map: all of it.
    for other in [
        "size(request.headers) > 0",
        "\"x-a\" in request.headers",
        "request.headers.exists(k, k == \"x-a\")",
        "request.headers.x == \"1\"",
        "has(request.headers.x)",
        "[request.headers][0][\"x-a\"] == \"1\"",
        "request.headers[request.method] == \"1\"",
        "request.size() > 0 && request.headers[\"x-a\"] == \"1\"",
    ] {
        assert_eq!(one(other).headers_read(), None, "{other}");
    }
    // Not read at all: no names (and no map: the attribute's bit is off).
    assert_eq!(
        one("request.method == \"GET\"").headers_read(),
        Some(&[][..])
    );
}

/// `jwt.decode_verify` is an overload of the environment (it reads the token in place): a
/// valid token's claims are read, a tampered one is not valid, and anything but a string
/// token is an error, which denies. The token is `policies/authz_test.yaml`'s customer's.
#[test]
fn jwt_decode_verify_reads_claims_and_refuses_what_is_not_a_token() {
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJyb2xlIjoiY3VzdG9tZXIiLCJzdWIiOiJjMSJ9.0M_Xr1S-nkvGiFI704lNLoNPGxRRqclKtsleIpkrnoM";
    let one = |when: &str| {
        policies(&[(
            "a.cel.yaml",
            &format!(
                "name: a\nrules:\n  - name: r\n    effect: allow\n    when: >\n      {when}\n"
            ),
        )])
        .unwrap()
    };
    let verify = |token: &str, secret: &str| {
        format!("jwt.decode_verify({token}, {{\"secret\": \"{secret}\", \"aud\": \"shop\"}})")
    };
    let header = |token: &str| req("GET", "/a", "", &[("x-token", token)]);
    let claims = one(&format!(
        "{v}[0] && {v}[2].role == \"customer\" && {v}[1].alg == \"HS256\"",
        v = verify("request.headers[\"x-token\"]", "arbiter-demo-secret")
    ));
    let v = decide(&claims, &header(TOKEN));
    assert!(v.allowed && v.errors.is_empty(), "{v:?}");
    let wrong_secret = one(&format!(
        "{}[0]",
        verify("request.headers[\"x-token\"]", "another-secret")
    ));
    assert!(!decide(&wrong_secret, &header(TOKEN)).allowed);
    let tampered = format!("{}x", &TOKEN[..TOKEN.len() - 1]);
    assert!(!decide(&claims, &header(&tampered)).allowed);
    // A token that is not a string on the empty request is refused at load (the load's probe),
    // with the place; one that is not a string only on some request is an error there, which
    // denies.
    let rule = format!(
        "name: a\nrules:\n  - name: r\n    effect: allow\n    when: '{}[0]'\n",
        verify("42", "s")
    );
    let refused = policies(&[("a.cel.yaml", &rule)]).unwrap_err();
    assert!(
        refused[0].message.contains("jwt.decode_verify") && refused[0].line == 5,
        "{refused:?}"
    );
    let not_a_string = one(&format!(
        "{}[0]",
        verify(
            "(request.method == \"POST\" ? dyn(42) : request.headers[\"x-token\"])",
            "arbiter-demo-secret"
        )
    ));
    assert!(decide(&not_a_string, &header(TOKEN)).allowed);
    let v = decide(&not_a_string, &req("POST", "/a", "", &[("x-token", TOKEN)]));
    assert!(!v.allowed && !v.errors.is_empty(), "{v:?}");
}

/// `jwt.decode_verify`'s conversions kept per thread (the last constraints; a verified
/// token's header and claims) answer as converting again would: tokens and constraints
/// alternating on one thread each read their own.
#[test]
fn jwt_conversions_kept_per_thread_answer_for_their_own_token() {
    use serde_json::json;
    let token = |role: &str| {
        crate::builtins::jwt::tests::hs256(
            "s3cret",
            &json!({"alg": "HS256", "typ": "JWT"}),
            &json!({"role": role, "aud": "shop"}),
        )
    };
    let (reader, writer) = (token("reader"), token("writer"));
    let p = one(
        r#"jwt.decode_verify(request.headers["x-token"], {"secret": request.headers["x-secret"], "aud": "shop"})[2].role == request.headers["x-role"]"#,
    );
    let ask = |token: &str, secret: &str, role: &str| {
        let r = req(
            "GET",
            "/a",
            "",
            &[("x-token", token), ("x-secret", secret), ("x-role", role)],
        );
        decide(&p, &r).allowed
    };
    for _ in 0..2 {
        assert!(ask(&reader, "s3cret", "reader"));
        assert!(ask(&writer, "s3cret", "writer"));
        assert!(!ask(&reader, "s3cret", "writer"));
        assert!(!ask(&writer, "another", "writer"));
        assert!(ask(&writer, "s3cret", "writer"));
        assert!(!ask(&writer, "s3cret", "reader"));
    }
}

/// An expression of 512 iterations of three nested comprehensions: thousands of steps.
const NESTED_ALLS: &str = "[1, 2, 3, 4, 5, 6, 7, 8].all(a, [1, 2, 3, 4, 5, 6, 7, 8].all(b, [1, 2, 3, 4, 5, 6, 7, 8].all(c, a + b + c > 0)))";

/// The CEL evaluator's step budget (vendor/cel patches 3 and 14) ends an evaluation at the
/// step after its last: a budget of exactly the steps an expression takes lets it finish,
/// one less stops it with the budget's error, and every later step fails too (a macro that
/// defers errors, `exists`, cannot go on). Nested evaluations keep the outer one's count.
#[test]
fn the_step_budget_ends_an_evaluation_at_its_last_step() {
    let env = Arc::new(Env::stdlib());
    let program = env
        .compile("[1, 2, 3, 4].exists(x, x == 4) && 2 + 2 == 4")
        .unwrap();
    let context = Context::with_env(env.clone());
    let (value, steps) = cel::deadline::with_budget(None, None, || {
        (program.execute(&context), cel::deadline::steps())
    });
    assert_eq!(value, Ok(CelValue::Bool(true)));
    assert!(steps > 10, "{steps}");
    let run = |budget: u64| {
        cel::deadline::with_budget(None, Some(budget), || {
            let value = program.execute(&context);
            (value, cel::deadline::steps())
        })
    };
    assert_eq!(run(steps), (Ok(CelValue::Bool(true)), steps));
    let (value, taken) = run(steps - 1);
    let error = value.unwrap_err();
    assert!(cel::deadline::over_budget(&error), "{error:?}");
    assert_eq!(
        taken, steps,
        "the failing step is counted, no later one runs on"
    );
    // A budget spent early: `exists` stops at the first failing step instead of iterating.
    let (value, taken) = run(3);
    assert!(cel::deadline::over_budget(&value.unwrap_err()));
    assert!(taken < steps, "{taken} of {steps}");
    // An evaluation inside another leaves the outer count and budget as they were.
    let (inner, outer_steps) = cel::deadline::with_budget(None, Some(steps + 100), || {
        let before = cel::deadline::steps();
        let inner = run(steps - 1).0;
        assert_eq!(cel::deadline::steps(), before);
        (inner, program.execute(&context))
    });
    assert!(cel::deadline::over_budget(&inner.unwrap_err()));
    assert_eq!(outer_steps, Ok(CelValue::Bool(true)));
    // A deadline already past stops the evaluation at its first clock reading.
    let past = std::time::Instant::now();
    let long = env.compile(NESTED_ALLS).unwrap();
    let (value, taken) = cel::deadline::with_budget(Some(past), None, || {
        (long.execute(&context), cel::deadline::steps())
    });
    assert!(cel::deadline::exceeded(&value.unwrap_err()));
    // The clock is read at step 256; the enclosing `all`s each try one more step, which fails
    // at once (the whole expression takes thousands).
    assert!((256..266).contains(&taken), "{taken}");
}

/// `evaluate_since` counts the time limit from the caller's clock reading: an evaluation
/// begun (by that reading) longer ago than the limit stops at its first clock check, the
/// same one begun now runs to its end.
#[test]
fn the_time_limit_counts_from_the_callers_start() {
    let mut p = policies_with(
        &[(
            "long.cel.yaml",
            &format!(
                "name: long\nrules:\n  - name: long\n    effect: allow\n    when: \"{NESTED_ALLS}\"\n"
            ),
        )],
        None,
    )
    .unwrap();
    p.set_time_limit(Some(std::time::Duration::from_secs(5)));
    let r = req("GET", "/", "", &[]);
    let input = build_input(&r, &InputOptions::default()).unwrap();
    let request = cel_request(&r, &input);
    let now = std::time::Instant::now();
    let v = p.evaluate_since(&request, now);
    assert!(v.allowed && !v.timed_out, "{v:?}");
    let long_ago = now
        .checked_sub(std::time::Duration::from_secs(6))
        .expect("a monotonic clock older than 6 s");
    let v = p.evaluate_since(&request, long_ago);
    assert!(v.timed_out && !v.allowed, "{v:?}");
}

/// A list of literals is made once and kept in the expression (vendor/cel patch 16): what
/// is built from it (a concatenation, a comprehension's result from `[]`) is a new list, and
/// evaluating the same program again gives the same answers; a list with any other element
/// is still made per evaluation, from the variables of that evaluation.
#[test]
fn list_literals_made_once_are_never_changed() {
    let env = Arc::new(Env::stdlib());
    let program = env
        .compile(
            "([1] + [2]).size() == 2 && [1] == [1] && [1, 2, 3].filter(x, x > 1) == [2, 3] \
             && [].size() == 0 && [1, 2, 3].map(x, x * 2) == [2, 4, 6] && [m, \"HEAD\"][0] == m",
        )
        .unwrap();
    for method in ["GET", "POST", "GET"] {
        let mut context = Context::with_env(env.clone());
        context.add_variable_from_value("m", method);
        assert_eq!(
            program.execute(&context),
            Ok(CelValue::Bool(true)),
            "{method}"
        );
    }
}

/// `data`'s selections are folded into variables bound once per data document (`fold.rs`):
/// each rule's folded expression answers as the expression as written does — values, errors
/// and presence tests — on the document it was bound to and after a data write; a `data`
/// bound by a comprehension is not the document.
#[test]
fn selections_of_data_are_folded_and_answer_as_written() {
    let rules = [
        // (rule, folded: whether the expression evaluated reads a folded variable)
        (
            "source.principal in data.authz.principals && data.authz.principals[source.principal].roles.exists(r, r in data.authz.roles && data.authz.roles[r].size() > 0)",
            true,
        ),
        (
            "has(data.authz.principals) && !has(data.authz.missing)",
            true,
        ),
        ("has(data.nothing.x)", false),
        ("data.authz.missing.x == 1", true),
        (
            "data.authz.list[1] == \"b\" && data.authz.list.size() == 2",
            true,
        ),
        ("data.x == 2", true),
        (
            "[{\"x\": request.method}].exists(data, data.x == \"GET\")",
            false,
        ),
        (
            "cel.bind(data, {\"x\": request.method}, data.x == \"GET\")",
            false,
        ),
        (
            "[1].exists(x, data.x == 2 && data.authz.list.exists(data, data == \"a\"))",
            true,
        ),
        // Map literals of constants: made once; one that fails, reads a bound `data` or holds
        // a map or list of the document's, not.
        ("{\"s\": data.x, \"k\": [\"v\", \"w\"]}.s == 2", true),
        ("{\"s\": data.authz.missing}.size() == 1", true),
        ("{\"a\": 1, \"a\": data.x}.a == 1", true),
        (
            "[request.method].exists(data, {\"v\": data}.v == \"GET\")",
            false,
        ),
        ("{\"l\": data.authz.list}.l.size() == 2", true),
    ];
    let mut text = String::from("name: f\nrules:\n");
    for (i, (when, _)) in rules.iter().enumerate() {
        text.push_str(&format!(
            "  - name: r{i}\n    effect: allow\n    when: '{}'\n",
            when.replace('\'', "''")
        ));
    }
    let sources = vec![SourceFile {
        name: "f.cel.yaml".into(),
        text,
    }];
    let fe = "spiffe://cluster.local/ns/shop/sa/frontend";
    let data = crate::value::from_json(&serde_json::json!({
        "x": 2,
        "authz": {
            "principals": {fe: {"roles": ["reader"]}},
            "roles": {"reader": [{"methods": ["GET"]}]},
            "list": ["a", "b"],
        },
    }));
    let p = CelPolicies::compile(&sources, &data).unwrap();
    let r = req("GET", "/x", fe, &[]);
    let input = build_input(&r, &InputOptions::default()).unwrap();
    // Each rule's expression as written and as evaluated, side by side in one context.
    let both = |p: &CelPolicies| -> Vec<(String, String)> {
        let mut ctx = p.root.new_inner_scope();
        bind_variables(&mut ctx, &cel_request(&r, &input), p.uses, p.headers_read());
        p.files[0]
            .rules
            .iter()
            .map(|rule| {
                (
                    format!("{:?}", CelValue::resolve(&rule.when.expr, &ctx)),
                    format!("{:?}", CelValue::resolve(&rule.when.run, &ctx)),
                )
            })
            .collect()
    };
    let answers = both(&p);
    for ((when, folded), ((written, run), rule)) in
        rules.iter().zip(answers.iter().zip(&p.files[0].rules))
    {
        assert_eq!(written, run, "{when}");
        assert_eq!(
            format!("{:?}", rule.when.run).contains("@data"),
            *folded,
            "{when}: {:?}",
            rule.when.run
        );
    }
    // The map of constants is one variable; the one that fails stays a literal.
    let literal = |i: usize| format!("{:?}", p.files[0].rules[i].when.run).contains("Map(");
    assert!(!literal(9) && literal(10) && literal(11) && literal(13));
    let values: Vec<&str> = answers.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        values,
        [
            "Ok(Bool(true))",
            "Ok(Bool(true))",
            "Err(NoSuchKey(\"nothing\"))",
            "Err(NoSuchKey(\"missing\"))",
            "Ok(Bool(true))",
            "Ok(Bool(true))",
            "Ok(Bool(true))",
            "Ok(Bool(true))",
            "Ok(Bool(true))",
            "Ok(Bool(true))",
            "Err(NoSuchKey(\"missing\"))",
            "Err(DuplicateKey(String(\"a\")))",
            "Ok(Bool(true))",
            "Ok(Bool(true))",
        ]
    );
    // A data write: the folded values are the new document's, and a selection it no longer
    // has fails as written.
    let written = crate::value::from_json(&serde_json::json!({"x": 3, "authz": {"list": ["a"]}}));
    let q = p.with_data(&written);
    let answers = both(&q);
    for ((when, _), (written, run)) in rules.iter().zip(&answers) {
        assert_eq!(written, run, "{when}");
    }
    let values: Vec<&str> = answers.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        values,
        [
            "Err(NoSuchKey(\"principals\"))",
            "Ok(Bool(false))",
            "Err(NoSuchKey(\"nothing\"))",
            "Err(NoSuchKey(\"missing\"))",
            "Ok(Bool(false))",
            "Ok(Bool(false))",
            "Ok(Bool(true))",
            "Ok(Bool(true))",
            "Ok(Bool(false))",
            "Ok(Bool(false))",
            "Err(NoSuchKey(\"missing\"))",
            "Err(DuplicateKey(String(\"a\")))",
            "Ok(Bool(true))",
            "Ok(Bool(false))",
        ]
    );
}
