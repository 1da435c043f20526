use super::*;
use crate::istio::{IstioOptions, parse};

/// Policies from YAML documents; `{ns}` and `{rules}` filled per policy.
fn set(docs: &[(&str, &str, &str)]) -> IstioPolicies {
    let mut policies = Vec::new();
    for (i, (ns, action, rules)) in docs.iter().enumerate() {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p{i}\n  namespace: {ns}\nspec:\n  action: {action}\n{rules}"
        );
        match parse("p.yaml", &text) {
            Ok((p, _)) => policies.extend(p),
            Err(e) => panic!("{e:?}\n{text}"),
        }
    }
    IstioPolicies {
        policies,
        options: IstioOptions::default(),
    }
}

fn allow(rules: &str) -> IstioPolicies {
    set(&[("shop", "ALLOW", rules)])
}

/// The found request, checked against the evaluator: each set decides it as the diff says.
fn found(a: &Answer, old: &IstioPolicies, new: &IstioPolicies) -> Witness {
    let Answer::Found(f) = a else {
        panic!("no difference found: {a:?}");
    };
    let r = request(&f.request);
    assert_eq!(old.evaluate(&r).allowed, f.old.allowed, "{f:?}");
    assert_eq!(new.evaluate(&r).allowed, f.new.allowed, "{f:?}");
    assert_ne!(f.old.allowed, f.new.allowed);
    f.request.clone()
}

#[test]
fn identical_sets_differ_nowhere() {
    let p = allow(
        "  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        paths: [/api/*]\n",
    );
    let d = diff(&p, &p);
    assert_eq!((d.new_access, d.new_denials), (Answer::None, Answer::None));
}

#[test]
fn exact_methods() {
    let old = allow("  rules:\n  - to:\n    - operation:\n        methods: [GET]\n");
    let new = allow("  rules:\n  - to:\n    - operation:\n        methods: [GET, POST]\n");
    let d = diff(&old, &new);
    let w = found(&d.new_access, &old, &new);
    assert_eq!((w.method.as_str(), w.namespace.as_str()), ("POST", "shop"));
    assert_eq!(d.new_denials, Answer::None);
}

#[test]
fn prefix_paths_narrowed() {
    let old = allow("  rules:\n  - to:\n    - operation:\n        paths: [/api/*]\n");
    let new = allow("  rules:\n  - to:\n    - operation:\n        paths: [/api/v1/*]\n");
    let d = diff(&old, &new);
    assert_eq!(d.new_access, Answer::None, "narrowing opens nothing");
    let w = found(&d.new_denials, &old, &new);
    assert!(
        w.path.starts_with("/api/") && !w.path.starts_with("/api/v1/"),
        "{w:?}"
    );
}

#[test]
fn suffix_hosts_and_their_canonical_forms() {
    let old = allow("  rules:\n  - to:\n    - operation:\n        hosts: [\"*.example.com\"]\n");
    let new = allow(
        "  rules:\n  - to:\n    - operation:\n        hosts: [\"*.example.com\", \"*.example.org\"]\n",
    );
    let d = diff(&old, &new);
    let w = found(&d.new_access, &old, &new);
    assert!(w.host.ends_with(".example.org"), "{w:?}");
    assert_eq!(d.new_denials, Answer::None);
    // A DENY on a host also matches its canonical spelling; an ALLOW only the host as sent:
    // a host written with a trailing dot is denied by the first and not allowed by the second.
    let deny = set(&[
        (
            "shop",
            "DENY",
            "  rules:\n  - to:\n    - operation:\n        hosts: [admin.example.com]\n",
        ),
        ("shop", "ALLOW", "  rules:\n  - {}\n"),
    ]);
    let open = allow("  rules:\n  - {}\n");
    let d = diff(&deny, &open);
    let w = found(&d.new_access, &deny, &open);
    assert!(w.host.starts_with("admin.example.com"), "{w:?}");
}

#[test]
fn presence_and_not_values_on_headers() {
    let old =
        allow("  rules:\n  - when:\n    - key: request.headers[x-token]\n      values: [\"*\"]\n");
    let new = allow(
        "  rules:\n  - when:\n    - key: request.headers[x-token]\n      notValues: [revoked]\n",
    );
    let d = diff(&old, &new);
    // NEW allows a request without the header; OLD needs it present.
    let w = found(&d.new_access, &old, &new);
    assert!(w.headers.is_empty(), "{w:?}");
    // OLD allows `revoked`; NEW does not.
    let w = found(&d.new_denials, &old, &new);
    assert!(w.headers.iter().any(|(_, v)| v == "revoked"), "{w:?}");
}

#[test]
fn repeated_header_lines_are_one_request() {
    // Only a request with both lines satisfies both conditions: the search finds it.
    let old = allow("  rules:\n  - {}\n");
    let new = set(&[
        (
            "shop",
            "DENY",
            "  rules:\n  - when:\n    - key: request.headers[x-role]\n      values: [a]\n    - key: request.headers[x-role]\n      values: [b]\n",
        ),
        ("shop", "ALLOW", "  rules:\n  - {}\n"),
    ]);
    let d = diff(&old, &new);
    let w = found(&d.new_denials, &old, &new);
    let mut values: Vec<&str> = w.headers.iter().map(|(_, v)| v.as_str()).collect();
    values.sort_unstable();
    assert_eq!(values, ["a", "b"]);
}

#[test]
fn not_methods_and_ports() {
    let old = allow(
        "  rules:\n  - to:\n    - operation:\n        notMethods: [DELETE]\n        ports: [\"8080\"]\n",
    );
    let new = allow(
        "  rules:\n  - to:\n    - operation:\n        notMethods: [DELETE, PUT]\n        ports: [\"8080\", \"9090\"]\n",
    );
    let d = diff(&old, &new);
    let w = found(&d.new_access, &old, &new);
    assert_eq!(w.destination_port, 9090);
    let w = found(&d.new_denials, &old, &new);
    assert_eq!((w.method.as_str(), w.destination_port), ("PUT", 8080));
}

#[test]
fn cidr_blocks() {
    let old = allow("  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/8]\n");
    let new = allow(
        "  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/16]\n        notIpBlocks: [10.0.3.0/24]\n",
    );
    let d = diff(&old, &new);
    assert_eq!(d.new_access, Answer::None);
    let w = found(&d.new_denials, &old, &new);
    let ip: std::net::Ipv4Addr = w.source_ip.parse().unwrap();
    let in_block = |net: [u8; 4], len: u32| {
        u32::from(ip) >> (32 - len) == u32::from(std::net::Ipv4Addr::from(net)) >> (32 - len)
    };
    assert!(in_block([10, 0, 0, 0], 8));
    assert!(
        !in_block([10, 0, 0, 0], 16) || in_block([10, 0, 3, 0], 24),
        "{w:?}"
    );
}

#[test]
fn deny_takes_precedence_over_allow() {
    let old = allow("  rules:\n  - {}\n");
    let new = set(&[
        ("shop", "ALLOW", "  rules:\n  - {}\n"),
        (
            "shop",
            "DENY",
            "  rules:\n  - to:\n    - operation:\n        paths: [/admin/*]\n",
        ),
    ]);
    let d = diff(&old, &new);
    assert_eq!(d.new_access, Answer::None);
    let w = found(&d.new_denials, &old, &new);
    assert!(w.path.starts_with("/admin/"), "{w:?}");
    let Answer::Found(f) = &d.new_denials else {
        unreachable!()
    };
    assert_eq!(f.new.policy.as_deref(), Some("shop/p1"));
}

#[test]
fn the_root_namespace_applies_everywhere() {
    let old = set(&[(
        "istio-system",
        "ALLOW",
        "  rules:\n  - to:\n    - operation:\n        methods: [GET]\n",
    )]);
    let new = set(&[(
        "shop",
        "ALLOW",
        "  rules:\n  - to:\n    - operation:\n        methods: [GET]\n",
    )]);
    let d = diff(&old, &new);
    let w = found(&d.new_denials, &old, &new);
    assert_ne!(w.namespace, "shop", "{w:?}");
    assert_eq!(d.new_access, Answer::None);
}

#[test]
fn principals_namespaces_and_service_accounts() {
    let old = allow(
        "  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/web/sa/frontend]\n",
    );
    let new = allow(
        "  rules:\n  - from:\n    - source:\n        namespaces: [web]\n        notPrincipals: [cluster.local/ns/web/sa/legacy]\n",
    );
    let d = diff(&old, &new);
    let w = found(&d.new_access, &old, &new);
    let p = w.principal.unwrap();
    assert!(
        p.contains("/ns/web/") && p != "spiffe://cluster.local/ns/web/sa/frontend",
        "{p}"
    );
    assert_eq!(d.new_denials, Answer::None);
    let by_sa =
        allow("  rules:\n  - from:\n    - source:\n        serviceAccounts: [web/frontend]\n");
    let d = diff(&old, &by_sa);
    let w = found(&d.new_access, &old, &by_sa);
    assert!(w.principal.unwrap().ends_with("/ns/web/sa/frontend"));
}

#[test]
fn what_a_jwt_carries_is_unknown_not_unchanged() {
    let old =
        allow("  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"issuer/*\"]\n");
    let d = diff(&old, &old);
    assert!(
        matches!(&d.new_access, Answer::Unknown(why) if why.iter().any(|w| w.contains("requestPrincipals"))),
        "{d:?}"
    );
}

// Random policy pairs over a small vocabulary: whenever the diff says "no new access", no
// request drawn from the same vocabulary (and strings beyond it) is allowed by NEW and denied
// by OLD; whenever it finds one, the evaluator agrees (checked in `found`'s way).
mod property {
    use super::*;
    use proptest::prelude::*;

    const METHODS: &[&str] = &["GET", "POST", "P*", "*T", "*"];
    const PATHS: &[&str] = &["/a", "/a/*", "/a/b", "*/b", "/c*", "*"];
    const PORTS: &[&str] = &["80", "8080"];
    const BLOCKS: &[&str] = &["10.0.0.0/8", "10.1.0.0/16", "192.168.1.1"];
    const PRINCIPALS: &[&str] = &["td/ns/a/sa/x", "td/ns/b/sa/y", "*"];
    const NAMESPACES: &[&str] = &["a", "b*", "*c"];
    const VALUES: &[&str] = &["v", "v*", "*w", "*"];

    fn field(name: &str, pick: &[usize], from: &[&str]) -> String {
        if pick.is_empty() {
            return String::new();
        }
        let items: Vec<String> = pick
            .iter()
            .map(|i| format!("\"{}\"", from[i % from.len()]))
            .collect();
        format!("        {name}: [{}]\n", items.join(", "))
    }

    fn rule(r: &[Vec<usize>; 8]) -> String {
        let mut s = String::from("  - ");
        let from = format!(
            "{}{}{}",
            field("principals", &r[0], PRINCIPALS),
            field("namespaces", &r[1], NAMESPACES),
            field("ipBlocks", &r[2], BLOCKS)
        );
        let to = format!(
            "{}{}{}{}",
            field("methods", &r[3], METHODS),
            field("paths", &r[4], PATHS),
            field("notPaths", &r[5], PATHS),
            field("ports", &r[6], PORTS)
        );
        let mut parts = Vec::new();
        if !from.is_empty() {
            parts.push(format!("from:\n    - source:\n{from}"));
        }
        if !to.is_empty() {
            parts.push(format!("to:\n    - operation:\n{to}"));
        }
        if !r[7].is_empty() {
            parts.push(format!(
                "when:\n    - key: request.headers[x-k]\n      values: [\"{}\"]\n",
                VALUES[r[7][0] % VALUES.len()]
            ));
        }
        if parts.is_empty() {
            s.push_str("{}\n");
        } else {
            s.push_str(&parts.join("    "));
        }
        s
    }

    fn policy_set(rules: &[([Vec<usize>; 8], bool)]) -> IstioPolicies {
        let docs: Vec<(String, String)> = rules
            .iter()
            .map(|(r, deny)| {
                (
                    if *deny { "DENY" } else { "ALLOW" }.to_string(),
                    format!("  rules:\n{}", rule(r)),
                )
            })
            .collect();
        let refs: Vec<(&str, &str, &str)> = docs
            .iter()
            .map(|(a, r)| ("shop", a.as_str(), r.as_str()))
            .collect();
        set(&refs)
    }

    fn picks() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0usize..6, 0..3)
    }

    fn rules() -> impl Strategy<Value = Vec<([Vec<usize>; 8], bool)>> {
        prop::collection::vec(
            (
                [
                    picks(),
                    picks(),
                    picks(),
                    picks(),
                    picks(),
                    picks(),
                    picks(),
                    picks(),
                ],
                prop::bool::weighted(0.3),
            ),
            1..3,
        )
    }

    /// A request drawn from the vocabulary and beyond it.
    fn sampled() -> impl Strategy<Value = Witness> {
        (
            prop::sample::select(vec![
                "",
                "td/ns/a/sa/x",
                "td/ns/b/sa/y",
                "td/ns/bc/sa/z",
                "td/ns/zc/sa/q",
                "other/ns/a/sa/x",
            ]),
            prop::sample::select(vec!["10.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1"]),
            prop::sample::select(vec![80u32, 8080, 9000]),
            prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]),
            prop::sample::select(vec!["/a", "/a/b", "/a/c", "/b", "/c", "/cd/b", "/x/y"]),
            prop::option::of(prop::sample::select(vec!["v", "vv", "w", "xw", ""])),
        )
            .prop_map(|(p, ip, port, m, path, h)| Witness {
                namespace: "shop".into(),
                labels: BTreeMap::new(),
                principal: (!p.is_empty()).then(|| format!("spiffe://{p}")),
                source_ip: ip.into(),
                destination_ip: "10.0.0.2".into(),
                destination_port: port,
                host: "shop".into(),
                method: m.into(),
                path: path.into(),
                headers: h
                    .map(|v| vec![("x-k".to_string(), v.to_string())])
                    .unwrap_or_default(),
                sni: String::new(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn no_new_access_is_never_claimed_where_a_sample_finds_one(
            old in rules(),
            new in rules(),
            samples in prop::collection::vec(sampled(), 64),
        ) {
            let (old, new) = (policy_set(&old), policy_set(&new));
            let d = diff(&old, &new);
            for (answer, dir) in [(&d.new_access, true), (&d.new_denials, false)] {
                match answer {
                    Answer::Found(f) => {
                        let r = request(&f.request);
                        prop_assert_eq!(old.evaluate(&r).allowed, !dir);
                        prop_assert_eq!(new.evaluate(&r).allowed, dir);
                    }
                    Answer::None => {
                        for w in &samples {
                            let r = request(w);
                            let (o, n) = (old.evaluate(&r).allowed, new.evaluate(&r).allowed);
                            prop_assert!(!(o != dir && n == dir), "claimed none, but {:?} differs", w);
                        }
                    }
                    Answer::Unknown(why) => prop_assert!(false, "unknown: {:?}", why),
                }
            }
        }
    }
}
