//! `arbiter istio diff OLD NEW`: whether some request is allowed by one set of Istio
//! AuthorizationPolicies and denied by another — decided exactly, with a request that shows it.
//!
//! # Why a finite search is exact
//!
//! A decision of [`IstioPolicies::evaluate`] depends on a request only through the truth of
//! *atomic tests*, each on one attribute: a string pattern (exact, `prefix*`, `*suffix`, `*`) on
//! the method, the path, the host, the SNI, a header's lines or a part of the caller's
//! principal; a CIDR on the source or destination address; a port; a workload label. Rules
//! combine those with AND, OR and NOT, policies with DENY-then-ALLOW; whatever the combination,
//! two requests that give every atomic test the same truth get the same decision from both sets.
//! So it is enough to try, for each attribute, one value for every combination of truths its
//! tests can take (a *cell*), and every tuple of such values across attributes; the attributes
//! are independent of one another (each test reads one), so the tuples cover every request
//! there is. The candidate values per attribute:
//!
//! - **Strings** under exact, prefix and suffix patterns: the exact literals, `p + F + s` for
//!   every prefix `p` and suffix `s` (each possibly empty) and a filler `F` that occurs in no
//!   literal, and the empty string. A value `v` that is no literal has a longest matched
//!   prefix `p*` and suffix `s*`; `p* + F + s*` matches exactly the prefixes of `p*` (a longer
//!   pattern would have to run into `F`), which are exactly the prefix patterns `v` matches (two
//!   prefixes of `v` are prefixes of each other), the same for suffixes, and no literal.
//! - **Hosts** are matched on the authority as sent and, where a match takes access away, also
//!   on its canonical form (no trailing dot, no default port): each string candidate is tried
//!   as sent, with a trailing dot, with `:80` and with both, and the patterns' own forms without
//!   those are added to the literals, so the two readings of a host vary together as they can.
//! - **Addresses**: the start of every interval the CIDR blocks' boundaries cut the IPv4 and IPv6
//!   spaces into. **Ports**: each port named, and one no rule names.
//! - **Principals** `td/ns/NS/sa/SA` (tests on the whole ID, its trust domain, namespace and
//!   service account): the literals, and every `t/ns/n/sa/s` for candidate parts `t`, `n`, `s`
//!   built as strings above; `t/F` (an ID without Istio's shape); and no principal.
//! - **Headers**, each name tested on its own: a header may repeat and a pattern matches when any
//!   line does, so the cells are the unions of the cells of single lines (and the absent header);
//!   they are computed as a closure and witnessed by the lines that produced them.
//! - **Workloads**: each namespace a policy names, the root one and one no policy names; every
//!   assignment of the labels selectors and target references test (each named value, or none).
//!
//! Values a request cannot carry are dropped (a path that is not canonical, a principal that is
//! not a SPIFFE ID), and with them only cells no request reaches.
//!
//! # What it does not decide
//!
//! Tests it cannot enumerate this way make a "no difference" answer *unknown* (a request it
//! finds is still a real difference): JWT attributes (`requestPrincipals`, `request.auth.*`:
//! what a token may contain is the issuer's), principal patterns with `*` other than the
//! presence `*`, path templates (`{*}`, `{**}`), headers named like pseudo-headers, and searches
//! past [`MAX_COMBINATIONS`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{IstioPolicies, Request};
use crate::istio::{parse_key, string_match};

/// The most request combinations one diff tries.
pub const MAX_COMBINATIONS: u64 = 20_000_000;

/// A request that the two sets decide differently: the attributes the policies read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Witness {
    /// The workload's namespace and labels (Envoy's context extensions).
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The caller's SPIFFE ID (`spiffe://…`), or none.
    pub principal: Option<String>,
    pub source_ip: String,
    pub destination_ip: String,
    pub destination_port: u32,
    pub host: String,
    pub method: String,
    pub path: String,
    /// Header lines (a name may repeat).
    pub headers: Vec<(String, String)>,
    pub sni: String,
}

/// How one set decided the witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decided {
    pub allowed: bool,
    /// `namespace/name` and rule index that decided, if a rule did.
    pub policy: Option<String>,
    pub rule: Option<usize>,
}

/// A difference, with the request that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub request: Witness,
    pub old: Decided,
    pub new: Decided,
}

/// The answer for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No request is decided this way differently: exact.
    None,
    Found(Box<Found>),
    /// None found, but the search cannot rule one out: why.
    Unknown(Vec<String>),
}

/// Both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Denied by OLD, allowed by NEW.
    pub new_access: Answer,
    /// Allowed by OLD, denied by NEW.
    pub new_denials: Answer,
    /// Requests tried.
    pub tried: u64,
}

/// Patterns on one string attribute.
#[derive(Debug, Default)]
struct Strings {
    exact: BTreeSet<String>,
    prefixes: BTreeSet<String>,
    suffixes: BTreeSet<String>,
}

impl Strings {
    fn add(&mut self, pattern: &str) {
        if pattern == "*" {
            return;
        }
        if let Some(p) = pattern.strip_suffix('*') {
            self.prefixes.insert(p.to_string());
        } else if let Some(s) = pattern.strip_prefix('*') {
            self.suffixes.insert(s.to_string());
        } else {
            self.exact.insert(pattern.to_string());
        }
    }

    fn literals(&self) -> impl Iterator<Item = &String> {
        self.exact
            .iter()
            .chain(&self.prefixes)
            .chain(&self.suffixes)
    }

    /// One value per cell (see the module's doc), the empty string included.
    fn candidates(&self, filler: &str) -> Vec<String> {
        let mut out: BTreeSet<String> = self.exact.iter().cloned().collect();
        out.insert(String::new());
        let empty = String::new();
        for p in self.prefixes.iter().chain(std::iter::once(&empty)) {
            for s in self.suffixes.iter().chain(std::iter::once(&empty)) {
                out.insert(format!("{p}{filler}{s}"));
            }
        }
        out.into_iter().collect()
    }
}

/// Everything the policies of both sets test, by attribute.
#[derive(Debug, Default)]
struct Tests {
    methods: Strings,
    paths: Strings,
    hosts: Strings,
    sni: Strings,
    principals: BTreeSet<String>,
    trust_domains: Strings,
    namespaces: Strings,
    service_accounts: BTreeSet<String>,
    source_blocks: BTreeSet<String>,
    destination_blocks: BTreeSet<String>,
    ports: BTreeSet<u32>,
    headers: BTreeMap<String, Strings>,
    /// Workload namespaces and labels (`service`, `gateway` for target references).
    namespaces_named: BTreeSet<String>,
    labels: BTreeMap<String, BTreeSet<String>>,
    unknown: BTreeSet<String>,
}

impl Tests {
    fn collect(sets: [&IstioPolicies; 2]) -> Self {
        let mut t = Tests::default();
        for set in sets {
            t.namespaces_named
                .insert(set.options.root_namespace.clone());
            for p in &set.policies {
                t.namespaces_named.insert(p.namespace.clone());
                for (k, v) in p.match_labels.iter().flatten() {
                    t.labels.entry(k.clone()).or_default().insert(v.clone());
                }
                for r in &p.target_refs {
                    let key = match r.kind.as_str() {
                        "Gateway" | "GatewayClass" => "gateway",
                        _ => "service",
                    };
                    t.labels
                        .entry(key.into())
                        .or_default()
                        .insert(r.name.clone());
                }
                for rule in p.rules.iter().flatten() {
                    t.rule(rule);
                }
            }
        }
        t
    }

    fn principal_pattern(&mut self, v: &str) {
        if v == "*" {
            return;
        }
        if v.contains('*') {
            self.unknown
                .insert("principal patterns with `*` other than `*` alone".into());
        }
        self.principals.insert(v.to_string());
    }

    fn rule(&mut self, rule: &super::Rule) {
        for s in &rule.from {
            for v in s.principals.iter().chain(&s.not_principals) {
                self.principal_pattern(v);
            }
            if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
                self.unknown
                    .insert("`requestPrincipals` (what a JWT may carry)".into());
            }
            for v in s.namespaces.iter().chain(&s.not_namespaces) {
                self.namespaces.add(v);
            }
            for v in s.trust_domains.iter().chain(&s.not_trust_domains) {
                self.trust_domains.add(v);
            }
            for v in s.service_accounts.iter().chain(&s.not_service_accounts) {
                self.service_accounts.insert(v.clone());
            }
            for v in s
                .ip_blocks
                .iter()
                .chain(&s.not_ip_blocks)
                .chain(&s.remote_ip_blocks)
                .chain(&s.not_remote_ip_blocks)
            {
                self.source_blocks.insert(v.clone());
            }
        }
        for o in &rule.to {
            for v in o.methods.iter().chain(&o.not_methods) {
                self.methods.add(v);
            }
            for v in o.paths.iter().chain(&o.not_paths) {
                if v.contains("{*}") || v.contains("{**}") {
                    self.unknown.insert("path templates (`{*}`, `{**}`)".into());
                }
                self.paths.add(v);
            }
            for v in o.hosts.iter().chain(&o.not_hosts) {
                self.host_pattern(&v.to_ascii_lowercase());
            }
            for v in o.ports.iter().chain(&o.not_ports) {
                self.port(v);
            }
        }
        for c in &rule.when {
            let (base, parts) = parse_key(&c.key);
            let values = c.values.iter().chain(&c.not_values);
            match base.as_str() {
                "request.headers" => match parts.first() {
                    Some(name) if !name.starts_with(':') && name != "host" => {
                        let h = self.headers.entry(name.to_ascii_lowercase()).or_default();
                        for v in values {
                            h.add(v);
                        }
                    }
                    _ => {
                        self.unknown
                            .insert(format!("`{}` (a pseudo-header in a condition)", c.key));
                    }
                },
                "source.ip" | "remote.ip" => self.source_blocks.extend(values.cloned()),
                "destination.ip" => self.destination_blocks.extend(values.cloned()),
                "destination.port" => {
                    for v in values {
                        self.port(v);
                    }
                }
                "source.namespace" => {
                    for v in values {
                        self.namespaces.add(v);
                    }
                }
                "source.principal" => {
                    for v in values {
                        self.principal_pattern(v);
                    }
                }
                "connection.sni" => {
                    for v in values {
                        self.sni.add(v);
                    }
                }
                other => {
                    self.unknown.insert(format!("`{other}` conditions"));
                }
            }
        }
    }

    /// A host pattern, and its forms without a trailing dot or the default port: the
    /// canonical reading of a host is matched against the same patterns.
    fn host_pattern(&mut self, v: &str) {
        self.hosts.add(v);
        let (star_front, core, star_back) = match (v.strip_prefix('*'), v.strip_suffix('*')) {
            (Some(s), _) if v != "*" => ("*", s, ""),
            (_, Some(p)) if v != "*" => ("", p, "*"),
            _ => ("", v, ""),
        };
        let bare = core.strip_suffix(":80").unwrap_or(core);
        let bare = bare.strip_suffix('.').unwrap_or(bare);
        if bare != core {
            self.hosts.add(&format!("{star_front}{bare}{star_back}"));
        }
    }

    fn port(&mut self, v: &str) {
        match v.parse::<u32>() {
            Ok(p) => {
                self.ports.insert(p);
            }
            Err(_) => {
                self.unknown.insert(format!("the port `{v}`"));
            }
        }
    }

    /// A string that occurs in no literal of any attribute.
    fn filler(&self) -> String {
        let mut all = String::new();
        for s in [
            &self.methods,
            &self.paths,
            &self.hosts,
            &self.sni,
            &self.trust_domains,
            &self.namespaces,
        ] {
            for l in s.literals() {
                all.push_str(l);
                all.push('\n');
            }
        }
        for h in self.headers.values() {
            for l in h.literals() {
                all.push_str(l);
                all.push('\n');
            }
        }
        for l in self.principals.iter().chain(&self.service_accounts) {
            all.push_str(l);
            all.push('\n');
        }
        (0u32..)
            .map(|n| format!("x{n}q"))
            .find(|f| !all.contains(f.as_str()))
            .unwrap_or_else(|| "x0q".into())
    }
}

/// The start of every interval the blocks cut their address family into (each block read as
/// the evaluator reads it), after a usual address of each family.
fn addresses(blocks: &BTreeSet<String>) -> Vec<String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let mut v4: BTreeSet<u128> = BTreeSet::from([0]);
    let mut v6: BTreeSet<u128> = BTreeSet::from([0]);
    for b in blocks {
        let Some((is_v6, first, last)) = crate::builtins::net::cidr_range(&super::block_cidr(b))
        else {
            continue;
        };
        let set = if is_v6 { &mut v6 } else { &mut v4 };
        set.insert(first);
        let top = if is_v6 {
            u128::MAX
        } else {
            u128::from(u32::MAX)
        };
        if last < top {
            set.insert(last + 1);
        }
    }
    // A usual address first: where it falls in the same interval as a boundary, it is the one
    // kept (values the policies cannot tell apart are tried once, the first of them).
    let mut out = vec!["10.0.0.2".to_string(), "fd00::2".to_string()];
    out.extend(
        v4.into_iter()
            .filter_map(|n| u32::try_from(n).ok())
            .map(|n| Ipv4Addr::from(n).to_string()),
    );
    out.extend(v6.into_iter().map(|n| Ipv6Addr::from(n).to_string()));
    out
}

/// Host values: each string candidate as sent, with a trailing dot, a default port, or both.
fn hosts(t: &Tests, filler: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for c in t.hosts.candidates(filler) {
        if c.is_empty() {
            continue;
        }
        // Name and port as a request's host is read.
        let h = crate::path::Host::parse(&c, "http");
        let name = h.name();
        out.insert(c.clone());
        match h.port() {
            Some(port) => {
                out.insert(format!("{name}.:{port}"));
            }
            None => {
                out.insert(format!("{name}."));
                out.insert(format!("{name}:80"));
                out.insert(format!("{name}.:80"));
            }
        }
    }
    out.into_iter().collect()
}

/// Caller principals (without `spiffe://`; empty: none).
fn principals(t: &Tests, filler: &str) -> Vec<String> {
    let valid =
        |p: &str| crate::identity::SpiffeId::parse_workload(&format!("spiffe://{p}")).is_ok();
    let mut tds = t.trust_domains.candidates(filler);
    let mut nss = t.namespaces.candidates(filler);
    let mut sas: BTreeSet<String> = BTreeSet::from([filler.to_string()]);
    for sa in &t.service_accounts {
        if let Some((ns, sa)) = sa.split_once('/') {
            nss.push(ns.to_string());
            sas.insert(sa.to_string());
        }
    }
    for p in &t.principals {
        let segs: Vec<&str> = p.split('/').collect();
        tds.push(segs[0].to_string());
        if let [_, "ns", ns, "sa", sa] = segs.as_slice() {
            nss.push((*ns).to_string());
            sas.insert((*sa).to_string());
        }
    }
    let mut out: BTreeSet<String> = BTreeSet::from([String::new()]);
    out.extend(t.principals.iter().filter(|p| valid(p)).cloned());
    let tds: BTreeSet<String> = tds.into_iter().filter(|s| !s.is_empty()).collect();
    let nss: BTreeSet<String> = nss.into_iter().filter(|s| !s.is_empty()).collect();
    for td in &tds {
        out.insert(format!("{td}/{filler}"));
        for ns in &nss {
            for sa in &sas {
                out.insert(format!("{td}/ns/{ns}/sa/{sa}"));
            }
        }
    }
    out.into_iter()
        .filter(|p| p.is_empty() || valid(p))
        .collect()
}

/// Paths a request can carry: canonical, starting with `/`.
fn paths(t: &Tests, filler: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for c in t.paths.candidates(filler) {
        let c = if c.starts_with('/') {
            c
        } else {
            format!("/{c}")
        };
        if crate::path::canonicalize(&c, crate::path::PathPolicy::Strict)
            .is_ok_and(|p| p.path == c && p.raw_query.is_empty())
        {
            out.insert(c);
        }
    }
    out.into_iter().collect()
}

/// One header's cells: sets of lines (none: absent), one per combination of pattern truths.
fn header_cells(patterns: &Strings, filler: &str) -> Vec<Vec<String>> {
    let tests: Vec<String> = patterns
        .exact
        .iter()
        .cloned()
        .chain(patterns.prefixes.iter().map(|p| format!("{p}*")))
        .chain(patterns.suffixes.iter().map(|s| format!("*{s}")))
        .collect();
    let truth = |line: &str| -> Vec<bool> { tests.iter().map(|p| string_match(p, line)).collect() };
    // The absent header; each single line (present, `*` is true); then unions.
    let mut cells: HashMap<(bool, Vec<bool>), Vec<String>> = HashMap::new();
    cells.insert((false, vec![false; tests.len()]), Vec::new());
    let singles: Vec<(Vec<bool>, String)> = patterns
        .candidates(filler)
        .into_iter()
        .map(|l| (truth(&l), l))
        .collect();
    for (t, l) in &singles {
        cells
            .entry((true, t.clone()))
            .or_insert_with(|| vec![l.clone()]);
    }
    loop {
        let present: Vec<(Vec<bool>, Vec<String>)> = cells
            .iter()
            .filter(|((p, _), _)| *p)
            .map(|((_, t), l)| (t.clone(), l.clone()))
            .collect();
        let mut grew = false;
        for (a, la) in &present {
            for (b, lb) in &singles {
                let t: Vec<bool> = a.iter().zip(b).map(|(x, y)| *x || *y).collect();
                if let std::collections::hash_map::Entry::Vacant(e) = cells.entry((true, t)) {
                    let mut lines = la.clone();
                    lines.push(lb.clone());
                    e.insert(lines);
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    let mut out: Vec<Vec<String>> = cells.into_values().collect();
    out.sort();
    out
}

/// One value per distinct truth vector of `tests`: values the policies cannot tell apart are
/// tried once.
fn distinct<T: Clone>(values: Vec<T>, truth: impl Fn(&T) -> Vec<bool>) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    values
        .into_iter()
        .filter(|v| seen.insert(truth(v)))
        .collect()
}

fn patterns(s: &Strings) -> Vec<String> {
    s.exact
        .iter()
        .cloned()
        .chain(s.prefixes.iter().map(|p| format!("{p}*")))
        .chain(s.suffixes.iter().map(|x| format!("*{x}")))
        .chain(std::iter::once("*".to_string()))
        .collect()
}

/// Compare two sets of policies; see the module's doc.
pub fn diff(old: &IstioPolicies, new: &IstioPolicies) -> Diff {
    let t = Tests::collect([old, new]);
    let filler = t.filler();
    let mut methods: Vec<String> = t.methods.candidates(&filler);
    methods.retain(|m| !m.is_empty());
    let paths = paths(&t, &filler);
    let hosts = hosts(&t, &filler);
    let sni = t.sni.candidates(&filler);
    let principals = principals(&t, &filler);
    let source_ips = addresses(&t.source_blocks);
    let destination_ips = addresses(&t.destination_blocks);
    let mut ports: Vec<u32> = t.ports.iter().copied().collect();
    ports.push(
        [8080, 80, 443]
            .into_iter()
            .chain(1..=u32::MAX)
            .find(|p| !t.ports.contains(p))
            .unwrap_or(1),
    );
    let headers: Vec<(String, Vec<Vec<String>>)> = t
        .headers
        .iter()
        .map(|(name, patterns)| (name.clone(), header_cells(patterns, &filler)))
        .collect();
    // Values the policies cannot tell apart are tried once.
    let methods = {
        let ps = patterns(&t.methods);
        distinct(methods, |m| ps.iter().map(|p| string_match(p, m)).collect())
    };
    let paths = {
        let ps = patterns(&t.paths);
        distinct(paths, |x| {
            ps.iter().map(|p| super::path_match(p, x)).collect()
        })
    };
    let hosts = {
        let ps = patterns(&t.hosts);
        distinct(hosts, |h| {
            let h = crate::path::Host::parse(h, "http");
            ps.iter()
                .flat_map(|p| {
                    [
                        super::host_matches(p, &h, false),
                        super::host_matches(p, &h, true),
                    ]
                })
                .collect()
        })
    };
    let sni = {
        let ps = patterns(&t.sni);
        distinct(sni, |x| ps.iter().map(|p| string_match(p, x)).collect())
    };
    let principals = {
        let ns = patterns(&t.namespaces);
        let td = patterns(&t.trust_domains);
        distinct(principals, |p| {
            let mut v: Vec<bool> = t.principals.iter().map(|l| l == p).collect();
            v.push(p.is_empty());
            v.extend(ns.iter().map(|x| string_match(x, super::namespace_of(p))));
            v.extend(
                td.iter()
                    .map(|x| string_match(x, p.split('/').next().unwrap_or(""))),
            );
            let sa = super::service_account_of(p);
            v.extend(t.service_accounts.iter().map(|x| *x == sa));
            v
        })
    };
    let source_ips = distinct(source_ips, |ip| {
        t.source_blocks
            .iter()
            .map(|b| super::ip_in(b, ip))
            .collect()
    });
    let destination_ips = distinct(destination_ips, |ip| {
        t.destination_blocks
            .iter()
            .map(|b| super::ip_in(b, ip))
            .collect()
    });
    let mut namespaces: Vec<String> = t.namespaces_named.iter().cloned().collect();
    namespaces.push(format!("ns-{filler}"));
    // Workload labels: each value named, or none.
    let label_keys: Vec<(&String, Vec<Option<&String>>)> = t
        .labels
        .iter()
        .map(|(k, vs)| {
            (
                k,
                std::iter::once(None).chain(vs.iter().map(Some)).collect(),
            )
        })
        .collect();

    let mut sizes: Vec<usize> = vec![
        namespaces.len(),
        principals.len(),
        source_ips.len(),
        destination_ips.len(),
        ports.len(),
        hosts.len(),
        methods.len(),
        paths.len(),
        sni.len(),
    ];
    sizes.extend(label_keys.iter().map(|(_, v)| v.len()));
    sizes.extend(headers.iter().map(|(_, c)| c.len()));
    let total = sizes
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n as u64))
        .unwrap_or(u64::MAX);
    let mut unknown: Vec<String> = t.unknown.iter().cloned().collect();
    if total > MAX_COMBINATIONS {
        unknown.push(format!(
            "{total} combinations of the values the policies tell apart, past the {MAX_COMBINATIONS} searched"
        ));
        return Diff {
            new_access: Answer::Unknown(unknown.clone()),
            new_denials: Answer::Unknown(unknown),
            tried: 0,
        };
    }
    let decided = |set: &IstioPolicies, r: &Request<'_>| {
        let v = set.evaluate(r);
        Decided {
            allowed: v.allowed,
            policy: v.decided_by.as_ref().map(|(p, _)| p.clone()),
            rule: v.decided_by.as_ref().map(|(_, i)| *i),
        }
    };
    let mut new_access = None;
    let mut new_denials = None;
    let mut tried = 0u64;
    let mut at = vec![0usize; sizes.len()];
    'search: loop {
        tried += 1;
        let mut labels = BTreeMap::new();
        for (i, (k, vs)) in label_keys.iter().enumerate() {
            if let Some(v) = vs[at[9 + i]] {
                labels.insert((*k).clone(), v.clone());
            }
        }
        let mut lines = Vec::new();
        for (i, (name, cells)) in headers.iter().enumerate() {
            for l in &cells[at[9 + label_keys.len() + i]] {
                lines.push((name.clone(), l.clone()));
            }
        }
        let w = Witness {
            namespace: namespaces[at[0]].clone(),
            labels,
            principal: Some(&principals[at[1]])
                .filter(|p| !p.is_empty())
                .map(|p| format!("spiffe://{p}")),
            source_ip: source_ips[at[2]].clone(),
            destination_ip: destination_ips[at[3]].clone(),
            destination_port: ports[at[4]],
            host: hosts[at[5]].clone(),
            method: methods[at[6]].clone(),
            path: paths[at[7]].clone(),
            headers: lines,
            sni: sni[at[8]].clone(),
        };
        let r = request(&w);
        let (o, n) = (decided(old, &r), decided(new, &r));
        if !o.allowed && n.allowed && new_access.is_none() {
            new_access = Some(Found {
                request: w.clone(),
                old: o.clone(),
                new: n.clone(),
            });
        }
        if o.allowed && !n.allowed && new_denials.is_none() {
            new_denials = Some(Found {
                request: w,
                old: o,
                new: n,
            });
        }
        if new_access.is_some() && new_denials.is_some() {
            break;
        }
        // The next combination (an odometer over the attributes).
        for (i, size) in sizes.iter().enumerate() {
            at[i] += 1;
            if at[i] < *size {
                continue 'search;
            }
            at[i] = 0;
        }
        break;
    }
    let answer = |f: Option<Found>| match f {
        Some(f) => Answer::Found(Box::new(f)),
        None if unknown.is_empty() => Answer::None,
        None => Answer::Unknown(unknown.clone()),
    };
    Diff {
        new_access: answer(new_access),
        new_denials: answer(new_denials),
        tried,
    }
}

/// The request the evaluator sees for a witness, as `serve` builds it from a check.
pub fn request(w: &Witness) -> Request<'_> {
    Request {
        principal: w
            .principal
            .as_deref()
            .map(|p| p.trim_start_matches("spiffe://").to_string())
            .unwrap_or_default(),
        request_principal: None,
        claims: None,
        source_ip: w.source_ip.clone(),
        destination_ip: w.destination_ip.clone(),
        destination_port: w.destination_port,
        host: crate::path::Host::parse(&w.host, "http"),
        method: &w.method,
        path: &w.path,
        headers: w.headers.clone(),
        header_lines: true,
        sni: w.sni.clone(),
        workload_namespace: w.namespace.clone(),
        workload_labels: w.labels.clone(),
    }
}

#[cfg(test)]
mod tests;
