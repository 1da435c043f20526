//! Istio exactness, proven against Envoy: every scenario of `conformance/cases/istio/*/` runs
//! behind two real Envoys side by side,
//! - one with the RBAC filters istiod would configure for the workload's sidecar (the
//!   translation in `arbiter_conformance::rbac`, written from istiod's source), which decide by
//!   themselves;
//! - one with ext_authz in front of arbiter deciding the same Istio policies.
//!
//! A seeded generator makes requests from the policies' own vocabulary and near misses (case,
//! ports, trailing dots, prefixes and suffixes of hosts and paths, query strings, repeated and
//! empty headers, plaintext vs mTLS, other trust domains and namespaces, JWTs with and without
//! the claims rules name) and sends each through both. A request Envoy's RBAC denies and
//! arbiter allows fails the test. One arbiter denies and RBAC allows is a documented choice
//! (arbiter is stricter): each kind is listed, and must be one the README explains.
//!
//! `ARBITER_ISTIO_DIFF_SEED` and `ARBITER_ISTIO_DIFF_REQUESTS` (per scenario) change the run;
//! the README gives the command for a longer one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arbiter_conformance::envoy::{Envoy, EnvoyOptions, HttpResponse, KeepAlive, tls_client_config};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_conformance::istio_envoy::{
    Pki, Signer, ext_authz_per_route, jwt_filter_keyed, routes, scenarios,
};
use arbiter_conformance::rbac::{self, Workload};
use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::istio::{self, Policy};
use arbiter_engine::testing::decision;
use arbiter_engine::{LoadOptions, PolicySet, PolicySources};
use serde_json::{Value as Json, json};

/// xorshift64*: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap()
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A value of an Istio string pattern: `*` filled in, or the pattern itself.
fn fill(pattern: &str, rng: &mut Rng) -> String {
    let filler = rng.pick(&["x", "abc", "Z9"]);
    if pattern == "*" {
        return filler.into();
    }
    if let Some(s) = pattern.strip_prefix('*') {
        return format!("{filler}{s}");
    }
    if let Some(p) = pattern.strip_suffix('*') {
        return format!("{p}{filler}");
    }
    pattern.into()
}

/// What the policies of a scenario talk about.
#[derive(Debug, Default)]
struct Vocabulary {
    hosts: BTreeSet<String>,
    methods: BTreeSet<String>,
    paths: BTreeSet<String>,
    /// header name → patterns.
    headers: BTreeMap<String, BTreeSet<String>>,
    principals: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    /// `iss/sub` patterns.
    request_principals: BTreeSet<String>,
    /// claim path → patterns.
    claims: BTreeMap<Vec<String>, BTreeSet<String>>,
}

impl Vocabulary {
    fn of(policies: &[Policy], default_host: &str) -> Self {
        let mut v = Vocabulary::default();
        v.hosts.insert(default_host.to_string());
        for m in ["GET", "POST", "DELETE"] {
            v.methods.insert(m.into());
        }
        v.paths.insert("/".into());
        for rule in policies.iter().flat_map(|p| p.rules.iter().flatten()) {
            for o in &rule.to {
                v.hosts.extend(o.hosts.iter().chain(&o.not_hosts).cloned());
                v.methods
                    .extend(o.methods.iter().chain(&o.not_methods).cloned());
                v.paths.extend(o.paths.iter().chain(&o.not_paths).cloned());
            }
            for s in &rule.from {
                v.principals
                    .extend(s.principals.iter().chain(&s.not_principals).cloned());
                v.namespaces
                    .extend(s.namespaces.iter().chain(&s.not_namespaces).cloned());
                v.request_principals.extend(
                    s.request_principals
                        .iter()
                        .chain(&s.not_request_principals)
                        .cloned(),
                );
            }
            for c in &rule.when {
                let values = c.values.iter().chain(&c.not_values).cloned();
                let inner: Vec<String> = c
                    .key
                    .split('[')
                    .skip(1)
                    .map(|p| p.trim_end_matches(']').to_string())
                    .collect();
                match c.key.split('[').next().unwrap_or("") {
                    "request.headers" => v
                        .headers
                        .entry(inner.concat().to_ascii_lowercase())
                        .or_default()
                        .extend(values),
                    "source.principal" => v.principals.extend(values),
                    "source.namespace" => v.namespaces.extend(values),
                    "request.auth.principal" => v.request_principals.extend(values),
                    "request.auth.claims" => v.claims.entry(inner).or_default().extend(values),
                    "request.auth.audiences" => v
                        .claims
                        .entry(vec!["aud".into()])
                        .or_default()
                        .extend(values),
                    "request.auth.presenter" => v
                        .claims
                        .entry(vec!["azp".into()])
                        .or_default()
                        .extend(values),
                    _ => {}
                }
            }
        }
        v
    }

    /// The issuers a token may carry (Envoy's `jwt_authn` rejects any other with 401).
    fn issuers(&self) -> Vec<String> {
        let mut out: BTreeSet<String> = self
            .request_principals
            .iter()
            .filter_map(|p| p.rsplit_once('/').map(|(iss, _)| iss.to_string()))
            .filter(|iss| !iss.contains('*') && !iss.is_empty())
            .collect();
        for patterns in self
            .claims
            .iter()
            .filter(|(k, _)| k.len() == 1 && k[0] == "iss")
            .map(|(_, v)| v)
        {
            for p in patterns {
                let mut rng = Rng(7);
                out.insert(fill(p, &mut rng));
            }
        }
        if out.is_empty() && (!self.claims.is_empty() || !self.request_principals.is_empty()) {
            out.insert("issuer.example.com".into());
        }
        out.into_iter().collect()
    }
}

/// One generated request.
#[derive(Debug, Clone)]
struct Generated {
    workload: usize,
    method: String,
    target: String,
    host: String,
    headers: Vec<(String, String)>,
    spiffe_id: Option<String>,
    jwt: Option<Json>,
}

impl Generated {
    fn describe(&self) -> String {
        format!(
            "{} {} host={:?} headers={:?} id={:?} jwt={} workload={}",
            self.method,
            self.target,
            self.host,
            self.headers,
            self.spiffe_id,
            self.jwt.as_ref().map_or("-".into(), Json::to_string),
            self.workload
        )
    }
}

fn host_variant(h: &str, rng: &mut Rng) -> String {
    let h = fill(h, rng);
    match rng.below(8) {
        0 => h.to_ascii_uppercase(),
        1 => format!("{h}:8080"),
        2 => format!("{h}:443"),
        3 => format!("{h}."),
        4 => format!("x{h}"),
        5 => format!("{h}x"),
        _ => h,
    }
}

fn path_variant(p: &str, rng: &mut Rng) -> String {
    let rest = rng.pick(&["", "a", "a/b"]);
    let one = rng.pick(&["seg", "s1"]);
    let p = p.replace("{**}", rest).replace("{*}", one);
    let p = fill(&p, rng);
    let p = if p.starts_with('/') {
        p
    } else {
        format!("/{p}")
    };
    match rng.below(9) {
        0 => format!("{p}/"),
        1 => p.to_ascii_uppercase(),
        2 => format!("{p}?q=1"),
        3 if p.len() > 1 => p[..p.len() - 1].to_string(),
        4 => format!("{p}x"),
        5 => format!("/x{p}"),
        _ => p,
    }
}

fn principal_variant(v: &Vocabulary, rng: &mut Rng) -> Option<String> {
    match rng.below(6) {
        0 => None,
        1 if !v.namespaces.is_empty() => {
            let ns = rng.pick(&v.namespaces.iter().collect::<Vec<_>>());
            let ns = fill(ns, rng);
            Some(format!(
                "spiffe://cluster.local/ns/{ns}/sa/{}",
                rng.pick(&["sleep", "x"])
            ))
        }
        2 => Some("spiffe://other.domain/ns/foo/sa/sleep".into()),
        _ if !v.principals.is_empty() => {
            let p = rng.pick(&v.principals.iter().collect::<Vec<_>>());
            let p = fill(p, rng);
            let p = match rng.below(5) {
                0 => p.replacen("cluster.local", "other.domain", 1),
                1 => format!("{p}x"),
                _ => p,
            };
            Some(format!("spiffe://{p}"))
        }
        _ => Some(format!(
            "spiffe://cluster.local/ns/{}/sa/sleep",
            rng.pick(&["default", "foo", "bar"])
        )),
    }
}

fn jwt_variant(v: &Vocabulary, issuers: &[String], rng: &mut Rng) -> Option<Json> {
    if issuers.is_empty() || rng.chance(35) {
        return None;
    }
    let iss = rng.pick(issuers);
    let mut payload = json!({"iss": iss, "sub": rng.pick(&["u", "subject-admin", "user1"])});
    let principals: Vec<&String> = v.request_principals.iter().collect();
    if let Some(rp) = (!principals.is_empty()).then(|| rng.pick(&principals).to_string())
        && let Some((i, s)) = rp.rsplit_once('/')
        && (i == iss || i.contains('*'))
    {
        payload["sub"] = Json::String(fill(s, rng));
    }
    for (path, patterns) in &v.claims {
        if path == &["iss".to_string()] || rng.chance(40) {
            continue;
        }
        let patterns: Vec<&String> = patterns.iter().collect();
        let value = rng.pick(&patterns);
        let value = fill(value, rng);
        let value = match rng.below(3) {
            0 => json!([value, "other"]),
            1 => json!(format!("{value}x")),
            _ => json!(value),
        };
        let mut at = &mut payload;
        for (i, k) in path.iter().enumerate() {
            if i + 1 == path.len() {
                at[k.as_str()] = value.clone();
            } else {
                if !at[k.as_str()].is_object() {
                    at[k.as_str()] = json!({});
                }
                at = &mut at[k.as_str()];
            }
        }
    }
    Some(payload)
}

fn generate(v: &Vocabulary, issuers: &[String], workloads: usize, rng: &mut Rng) -> Generated {
    let hosts: Vec<&String> = v.hosts.iter().collect();
    let methods: Vec<&String> = v.methods.iter().collect();
    let paths: Vec<&String> = v.paths.iter().collect();
    let method = rng.pick(&methods);
    let method = fill(method, rng);
    let method = if rng.chance(10) {
        method.to_ascii_lowercase()
    } else {
        method
    };
    let mut headers = Vec::new();
    for (name, patterns) in &v.headers {
        if rng.chance(25) {
            continue;
        }
        let patterns: Vec<&String> = patterns.iter().collect();
        let value = rng.pick(&patterns);
        let value = fill(value, rng);
        match rng.below(6) {
            0 => headers.push((name.clone(), String::new())),
            1 => {
                headers.push((name.clone(), value.clone()));
                headers.push((name.clone(), "second".into()));
            }
            2 => headers.push((name.clone(), value.to_ascii_uppercase())),
            _ => headers.push((name.clone(), value)),
        }
    }
    Generated {
        workload: rng.below(workloads),
        method,
        target: {
            let p = rng.pick(&paths);
            path_variant(p, rng)
        },
        host: {
            let h = rng.pick(&hosts);
            host_variant(h, rng)
        },
        headers,
        spiffe_id: principal_variant(v, rng),
        jwt: jwt_variant(v, issuers, rng),
    }
}

/// How a request was answered: allowed (the upstream's 200), denied (403), refused by
/// arbiter's strict path reading (400 `non_canonical_path`, a denial too), or something else
/// (401 from `jwt_authn`, 400 for a request Envoy refuses).
/// A HEAD answer has no body to tell arbiter's 400 from another: arbiter's Envoy answering
/// 400 where the RBAC Envoy answered is arbiter's refusal.
fn verdict(r: &HttpResponse, method: &str) -> &'static str {
    match r.status {
        200 => "allow",
        403 => "deny",
        400 if r.body_text() == "non_canonical_path" || method == "HEAD" => "refused",
        _ => "other",
    }
}

/// A SPIFFE workload ID by the spec's rules (SPIFFE-ID §2): `spiffe://`, a trust domain of
/// lower-case letters, digits, `.`, `-`, `_`, and a non-empty path of non-empty segments.
fn spiffe_workload_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let Some((td, path)) = rest.split_once('/') else {
        return false;
    };
    !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Why arbiter denied what Envoy's RBAC filter allowed, when it is one of the choices the
/// README documents (arbiter stricter on purpose); `None` for anything else.
fn documented_stricter(g: &Generated, allow_filter: bool, arbiter: &str) -> Option<&'static str> {
    if arbiter == "refused" {
        return Some("strict path reading: a non-canonical path is refused (400)");
    }
    if !allow_filter {
        return Some(
            "no Istio ALLOW policy selects the workload: Istio allows, arbiter denies unless allow_without_allow_policies",
        );
    }
    if g.spiffe_id
        .as_deref()
        .is_some_and(|id| !spiffe_workload_id(id))
    {
        return Some(
            "the peer certificate's URI SAN is not a SPIFFE workload ID: no principal (`*` does not match)",
        );
    }
    let repeated = g
        .headers
        .iter()
        .enumerate()
        .any(|(i, (k, _))| g.headers[..i].iter().any(|(k2, _)| k2 == k));
    if repeated {
        return Some(
            "a repeated header reaches arbiter comma-joined (Envoy's `headers`): the lines cannot be told apart, and arbiter reads them the stricter way",
        );
    }
    let h = &g.host;
    if h.ends_with('.')
        || h.ends_with(":443")
        || h.ends_with(":80")
        || h.contains(".:")
        || *h != h.to_ascii_lowercase()
    {
        return Some(
            "a DENY rule's host also matches the canonical spelling (trailing dot, default port, case)",
        );
    }
    None
}

#[test]
fn istio_policies_decide_as_envoy_rbac_does() {
    let seed = env_number("ARBITER_ISTIO_DIFF_SEED", 0x15710);
    let per_scenario = usize::try_from(env_number("ARBITER_ISTIO_DIFF_REQUESTS", 170)).unwrap();
    let mut rng = Rng(seed | 1);
    let signer = Signer::new();
    let mut pki = Pki::new();
    let mut sent = 0usize;
    let mut looser: Vec<String> = Vec::new();
    let mut stricter: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut other: Vec<String> = Vec::new();
    let mut undocumented: Vec<String> = Vec::new();
    let mut agree_allow = 0usize;
    let mut agree_deny = 0usize;
    let mut untranslated: Vec<String> = Vec::new();
    // One kept-alive connection per Envoy and client certificate: a handshake per client,
    // not per request.
    let mut connections = KeepAlive::default();
    for dir in scenarios() {
        let sources = PolicySources::discover(std::slice::from_ref(&dir)).unwrap();
        let mut policies: Vec<Policy> = Vec::new();
        for f in &sources.istio {
            let (p, _) = istio::parse(&f.name, &f.text).unwrap_or_else(|e| panic!("{e:?}"));
            policies.extend(p);
        }
        let files = decision::parse_all(&sources, arbiter_ext_authz::protojson::authz_request)
            .unwrap_or_else(|e| panic!("{e}"));
        let file = &files[0];
        // The workloads the scenario's cases address, as context extensions.
        let mut workloads: Vec<BTreeMap<String, String>> = Vec::new();
        let mut default_host = "example.com".to_string();
        for case in &file.cases {
            let Some(short) = &case.short else { continue };
            let ext: BTreeMap<String, String> = short
                .get("context_extensions")
                .and_then(Json::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if !workloads.contains(&ext) {
                workloads.push(ext);
            }
            if let Some(h) = short.get("host").and_then(Json::as_str) {
                default_host = h.to_string();
            }
        }
        let root = LoadOptions::default().istio.root_namespace;
        let mut filters = Vec::new();
        let mut skip = None;
        for w in &workloads {
            let mut labels = w.clone();
            // Without a namespace extension arbiter reads the workload's namespace from
            // destination.principal: the listener certificate's (ns/foo).
            let namespace = labels.remove("namespace").unwrap_or_else(|| "foo".into());
            match rbac::rbac_filters(&policies, &Workload { namespace, labels }, &root) {
                Ok(f) => filters.push(f),
                Err(why) => skip = Some(why),
            }
        }
        if let Some(why) = skip {
            untranslated.push(format!("{}: {why}", dir.display()));
            continue;
        }
        let vocabulary = Vocabulary::of(&policies, &default_host);
        let issuers = vocabulary.issuers();

        let mut istio_only = sources.clone();
        istio_only.cel.clear();
        istio_only.rego.clear();
        let set = PolicySet::from_sources(&istio_only, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let authorizer = Authorizer::new(Arc::new(set), file.path.clone(), InputOptions::default());
        let chain = pki.listener_tls();
        let jwt = if issuers.is_empty() {
            String::new()
        } else {
            // istiod files every verified payload under `payload` (EnvoyJwtFilterPayload).
            jwt_filter_keyed(&issuers, &signer.jwks, Some("payload"))
        };
        let mut config = loopback_config(None);
        config.workers = 0;
        let harness = Harness::start(authorizer, config, |o: &mut EnvoyOptions| {
            o.filter_chain_extra = chain.clone();
            o.http_filters_before = jwt.clone();
            o.routes = routes(&workloads, &|i| ext_authz_per_route(&workloads[i]));
            o.ext_authz_extra =
                "              metadata_context_namespaces: [envoy.filters.http.jwt_authn]".into();
        })
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut rbac_options = EnvoyOptions::new(harness.upstream, harness.upstream);
        rbac_options.filter_chain_extra = chain;
        rbac_options.http_filters_before = jwt;
        rbac_options.authz_filters = Some(rbac::http_filters());
        rbac_options.routes = routes(&workloads, &|i| {
            rbac::per_route(&filters[i].0, filters[i].1.as_ref())
        });
        let rbac_envoy =
            Envoy::start(&rbac_options).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));

        for _ in 0..per_scenario {
            let g = generate(&vocabulary, &issuers, workloads.len(), &mut rng);
            let client = g.spiffe_id.as_ref().map(|id| pki.client(id));
            let token = g
                .jwt
                .as_ref()
                .map(|p| format!("Bearer {}", signer.token(p)));
            let route = g.workload.to_string();
            let mut headers: Vec<(&str, &str)> =
                vec![("host", &g.host), ("x-arbiter-workload", &route)];
            headers.extend(g.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            if let Some(t) = &token {
                headers.push(("authorization", t));
            }
            let config = || {
                tls_client_config(
                    &pki.ca.pem,
                    client
                        .as_ref()
                        .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
                    &[b"http/1.1"],
                )
            };
            let who = g.spiffe_id.clone().unwrap_or_default();
            let mut send = |port: u16| {
                connections
                    .request(port, &who, &config, &g.method, &g.target, &headers)
                    .unwrap_or_else(|e| panic!("{}: {e}", g.describe()))
            };
            let by_rbac = send(rbac_envoy.port);
            let by_arbiter = send(harness.envoy.port);
            sent += 1;
            let line = format!("{}: {}", dir.display(), g.describe());
            match (
                verdict(&by_rbac, &g.method),
                verdict(&by_arbiter, &g.method),
            ) {
                ("allow", "allow") => agree_allow += 1,
                ("deny", "deny" | "refused") => agree_deny += 1,
                ("deny" | "refused", "allow") => looser.push(line),
                ("allow", arbiter @ ("deny" | "refused")) => {
                    let allow_filter = filters[g.workload].1.is_some();
                    match documented_stricter(&g, allow_filter, arbiter) {
                        Some(why) => stricter.entry(why.to_string()).or_default().push(line),
                        None => undocumented.push(format!(
                            "{line}: arbiter {} ({})",
                            by_arbiter.status,
                            by_arbiter.body_text()
                        )),
                    }
                }
                _ if by_rbac.status == by_arbiter.status => {}
                _ => other.push(format!(
                    "{line}: RBAC {} ({}), arbiter {} ({})",
                    by_rbac.status,
                    by_rbac.body_text(),
                    by_arbiter.status,
                    by_arbiter.body_text()
                )),
            }
        }
        drop(rbac_envoy);
    }
    eprintln!(
        "Istio differential (seed {seed:#x}): {sent} requests, {agree_allow} allowed and {agree_deny} denied by both, {} stricter as documented, {} stricter otherwise, {} looser, {} other",
        stricter.values().map(Vec::len).sum::<usize>(),
        undocumented.len(),
        looser.len(),
        other.len()
    );
    for (why, lines) in &stricter {
        eprintln!("  stricter: {why}: {} (e.g. {})", lines.len(), lines[0]);
    }
    assert!(
        untranslated.is_empty(),
        "scenarios not translated to RBAC: {untranslated:?}"
    );
    assert!(
        looser.is_empty(),
        "arbiter allowed what Envoy's RBAC filter denies ({}):\n{}",
        looser.len(),
        looser.join("\n")
    );
    assert!(
        other.is_empty(),
        "the two Envoys answered differently ({}):\n{}",
        other.len(),
        other.join("\n")
    );
    assert!(
        undocumented.is_empty(),
        "arbiter denied what Envoy's RBAC filter allows, for no documented reason ({}):\n{}",
        undocumented.len(),
        undocumented.join("\n")
    );
    assert!(
        sent >= 2000 || std::env::var_os("ARBITER_ISTIO_DIFF_REQUESTS").is_some(),
        "at least 2,000 generated requests, {sent} sent"
    );
    assert!(
        agree_allow > sent / 10 && agree_deny > sent / 10,
        "the generator must reach both answers often: {agree_allow} allowed, {agree_deny} denied of {sent}"
    );
}
