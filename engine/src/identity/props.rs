//! Property tests: SPIFFE ID and XFCC parsing never panic, and valid values round-trip.

use proptest::prelude::*;

use super::{SpiffeId, spiffe_match, xfcc};

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,30}"
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}".prop_filter("not a dot segment", |s| s != "." && s != "..")
}

fn spiffe_id() -> impl Strategy<Value = String> {
    (trust_domain(), prop::collection::vec(segment(), 1..6))
        .prop_map(|(td, segs)| format!("spiffe://{td}/{}", segs.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn spiffe_parse_never_panics(s in ".*") {
        let _ = SpiffeId::parse(&s);
        let _ = spiffe_match(&s, "spiffe://example.org/**");
    }

    #[test]
    fn spiffe_parse_never_panics_on_near_misses(td in "[ -~]{0,20}", path in "[ -~/]{0,40}") {
        let s = format!("spiffe://{td}{path}");
        if let Ok(id) = SpiffeId::parse(&s) {
            // Whatever is accepted is exactly what was given, and parses again.
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert!(SpiffeId::parse(id.as_str()).is_ok());
            prop_assert!(!id.path().contains("//"));
            prop_assert!(id.trust_domain().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
        }
    }

    #[test]
    fn valid_ids_round_trip(s in spiffe_id()) {
        let id = SpiffeId::parse_workload(&s).unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        let rebuilt = format!("spiffe://{}{}", id.trust_domain(), id.path());
        prop_assert_eq!(&rebuilt, &s);
        prop_assert_eq!(id.segments().join("/"), id.path()[1..].to_string());
        // Every ID matches its own trust domain's `**`, and no other trust domain's.
        let own = format!("spiffe://{}/**", id.trust_domain());
        let other = format!("spiffe://x{}/**", id.trust_domain());
        prop_assert!(spiffe_match(&s, &own));
        prop_assert!(!spiffe_match(&s, &other));
    }

    #[test]
    fn xfcc_parse_never_panics(s in ".*") {
        let _ = xfcc::parse(&s);
    }

    #[test]
    fn xfcc_round_trips_quoted_values(
        elements in prop::collection::vec(
            prop::collection::btree_map("[a-z]{1,8}", "[ -~]{0,20}", 1..4),
            1..4,
        )
    ) {
        // Render every value quoted, escaping `"` and `\`; parsing must give the values back.
        let text = elements
            .iter()
            .map(|el| {
                el.iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .collect::<Vec<_>>()
            .join(",");
        let parsed = xfcc::parse(&text).unwrap();
        prop_assert_eq!(parsed.len(), elements.len());
        for (p, e) in parsed.iter().zip(&elements) {
            for (k, v) in e {
                prop_assert_eq!(&p[k], &vec![v.clone()]);
            }
        }
    }
}
