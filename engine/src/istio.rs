//! Istio `AuthorizationPolicy` (`security.istio.io/v1` and `v1beta1`) as a policy language,
//! decided the way Istio's proxies decide (istio/api `security/v1beta1/authorization_policy.proto`;
//! istio.io "Authorization Policy" and "Authorization Policy Conditions").
//!
//! - **Order**: CUSTOM (that is arbiter itself: loaded and noted, nothing else), then DENY — any
//!   matching rule denies — then ALLOW — any matching rule allows, else deny. Istio allows a
//!   workload that no ALLOW policy selects; arbiter denies it unless
//!   [`IstioOptions::allow_without_allow_policies`] says otherwise. AUDIT policies only mark
//!   the decision (`audit` in its record).
//! - **Rules**: a rule matches when one of its `from`, one of its `to` and all of its `when`
//!   match; an empty rule matches everything; a policy without rules matches nothing.
//! - **Strings**: exact, prefix `abc*`, suffix `*abc`, presence `*`. Principals are SPIFFE IDs
//!   without `spiffe://` (`cluster.local/ns/default/sa/sleep`), taken from the caller's verified
//!   identity. Hosts match case-insensitively; paths are arbiter's canonical path (Istio's
//!   normalization, stricter), with `{*}` (one segment) and `{**}` (the rest) templates.
//! - **Scope**: a policy in the root namespace (`istio-system`) applies to every workload; any
//!   other to workloads of its namespace. `selector.matchLabels` and `targetRefs` match the
//!   workload Envoy describes in the check's context extensions (`namespace`, labels such as
//!   `app`, and `service` for a `Service` target); without a namespace extension, the
//!   workload's namespace comes from `destination.principal`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::diagnostic::Diagnostic;

pub mod diff;

/// How Istio policies are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioOptions {
    pub root_namespace: String,
    /// Istio's rule that a workload no ALLOW policy selects is allowed. Off by default: arbiter
    /// denies what nothing allows.
    pub allow_without_allow_policies: bool,
}

impl Default for IstioOptions {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".into(),
            allow_without_allow_policies: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    selector: Option<Selector>,
    #[serde(default)]
    target_ref: Option<TargetRef>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    provider: Option<Json>,
    #[serde(default)]
    rules: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    from: Vec<FromSpec>,
    #[serde(default)]
    to: Vec<ToSpec>,
    #[serde(default)]
    when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FromSpec {
    source: Source,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToSpec {
    operation: Operation,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// One rule: any `from`, any `to`, all `when` (empty lists match).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// One loaded policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub file: String,
    pub line: u32,
    pub name: String,
    pub namespace: String,
    pub action: Action,
    pub match_labels: Option<BTreeMap<String, String>>,
    pub target_refs: Vec<TargetRef>,
    /// `None`: the policy has no rules (it matches nothing).
    pub rules: Option<Vec<Rule>>,
    /// `istio.io/dry-run: "true"`: evaluated and recorded, never enforced.
    pub dry_run: bool,
}

impl Policy {
    /// `namespace/name`, as decision records name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The workload and request attributes rules are matched against.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The caller's SPIFFE ID without `spiffe://`, empty when unauthenticated.
    pub principal: String,
    /// `iss/sub` of the request's verified JWT (Envoy's `jwt_authn` metadata), if any.
    pub request_principal: Option<String>,
    pub claims: Option<&'a Json>,
    pub source_ip: String,
    pub destination_ip: String,
    pub destination_port: u32,
    /// The request's host, read once ([`crate::path::Host`]); `hosts` match its authority.
    pub host: crate::path::Host,
    pub method: &'a str,
    /// Canonical path, without the query.
    pub path: &'a str,
    /// Lower-case names. One entry per header line when Envoy sent the lines (`header_map`,
    /// `encode_raw_headers: true`: `header_lines` is true); otherwise Envoy's `headers`, where
    /// repeated lines arrive joined with commas.
    pub headers: Vec<(String, String)>,
    pub header_lines: bool,
    pub sni: String,
    /// The target workload: namespace, labels and service (from context extensions).
    pub workload_namespace: String,
    pub workload_labels: BTreeMap<String, String>,
}

fn socket(p: Option<&crate::request::Peer>) -> (String, u32) {
    match p.and_then(|p| p.address.as_ref()) {
        Some(crate::request::Address::Socket(s)) => (s.address.clone(), s.port_value),
        _ => (String::new(), 0),
    }
}

impl<'a> Request<'a> {
    /// The attributes of a check, projected from the request as it was read
    /// ([`crate::input::read_request`]: its canonical path, host and headers); `identity` is
    /// the caller's verified identity (`input.identity`).
    pub fn from_check(
        req: &'a crate::request::AuthzRequest,
        input: crate::input::Attributes<'a>,
        identity: Option<&regorus::Value>,
    ) -> Self {
        static EMPTY: std::sync::OnceLock<crate::request::HttpRequest> = std::sync::OnceLock::new();
        let http = req
            .http
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default));
        // Istio's principals are mTLS identities: a JWT-SVID is not one (Istio reads JWTs
        // through `requestPrincipals`).
        let principal = identity
            .filter(|i| {
                i["source"]
                    .as_string()
                    .map_or(true, |s| s.as_ref() != "jwt-svid")
            })
            .and_then(|i| i["spiffe_id"].as_string().ok().map(|s| s.to_string()))
            .map(|id| id.trim_start_matches("spiffe://").to_string())
            .unwrap_or_default();
        // Envoy's jwt_authn filter puts the verified payload in the metadata.
        let claims = req.metadata_context.as_ref().and_then(|m| {
            m.filter_metadata
                .iter()
                .find(|(k, _)| k == "envoy.filters.http.jwt_authn")
                .and_then(|(_, v)| {
                    v.as_object()
                        .and_then(|o| o.values().find(|p| p.get("iss").is_some()))
                })
        });
        let request_principal = claims.and_then(|c| {
            Some(format!(
                "{}/{}",
                c.get("iss")?.as_str()?,
                c.get("sub")?.as_str()?
            ))
        });
        let (source_ip, _) = socket(req.source.as_ref());
        let (destination_ip, destination_port) = socket(req.destination.as_ref());
        // Envoy's RBAC filter matches each line of a repeated header: the lines when Envoy
        // sent them, else the values as the input holds them (Envoy's comma-joined map).
        let lines = http.header_lines();
        let header_lines = lines.separate;
        let headers: Vec<(String, String)> = if header_lines {
            lines
                .lines
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        } else {
            input.headers.to_vec()
        };
        let mut labels: BTreeMap<String, String> = req.context_extensions.iter().cloned().collect();
        let workload_namespace = labels.remove("namespace").unwrap_or_else(|| {
            let dp = req
                .destination
                .as_ref()
                .map(|d| d.principal.trim_start_matches("spiffe://").to_string())
                .unwrap_or_default();
            namespace_of(&dp).to_string()
        });
        Self {
            principal,
            request_principal,
            claims,
            source_ip,
            destination_ip,
            destination_port,
            host: input.host.clone(),
            method: &http.method,
            path: &input.path.path,
            headers,
            sni: req
                .tls_session
                .as_ref()
                .map(|t| t.sni.clone())
                .unwrap_or_default(),
            header_lines,
            workload_namespace,
            workload_labels: labels,
        }
    }
}

/// What the Istio policies decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// No DENY rule matched and no ALLOW policy selects the workload: Istio would allow, and
    /// `allowed` is [`IstioOptions::allow_without_allow_policies`]. Other policy languages,
    /// when loaded, decide such a request alone.
    pub abstained: bool,
    /// `(policy namespace/name, rule index)` that decided; `None` when no rule did.
    pub decided_by: Option<(String, usize)>,
    /// AUDIT policies whose rules matched.
    pub audit: Vec<String>,
    /// What the dry-run policies selecting the workload would have decided on their own.
    pub dry_run: Option<DryRun>,
    /// Why, for a denial no rule decided.
    pub note: Option<String>,
}

/// The shadow decision of `istio.io/dry-run` policies (Istio's `shadow_engine_result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    pub allowed: bool,
    pub decided_by: Option<(String, usize)>,
}

/// All Istio policies of a policy set.
#[derive(Debug, Clone, Default)]
pub struct IstioPolicies {
    pub policies: Vec<Policy>,
    pub options: IstioOptions,
}

/// Whether a YAML file holds Istio authorization policies.
pub fn looks_like_istio(text: &str) -> bool {
    text.contains("security.istio.io") && text.contains("AuthorizationPolicy")
}

/// The documents of a multi-document YAML text, each with the number of lines before it.
fn documents(text: &str) -> Vec<(u32, &str)> {
    let mut out = Vec::new();
    let (mut start, mut start_line, mut pos) = (0usize, 0u32, 0usize);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.starts_with("---") && line[3..].trim().is_empty() {
            out.push((start_line, &text[start..pos]));
            start = pos + line.len();
            start_line = u32::try_from(n + 1).unwrap_or(u32::MAX);
        }
        pos += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

fn line_of(text: &str, needle: &str) -> u32 {
    text.lines()
        .position(|l| l.contains(needle))
        .and_then(|i| u32::try_from(i + 1).ok())
        .unwrap_or(1)
}

/// Istio string matching: exact, `prefix*`, `*suffix`, and `*` for any non-empty value
/// (istiod's `.+`; on a header, `*` is a presence match instead: see `condition_matches`).
pub fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// A path template piece: `{*}` is one non-empty segment, `{**}` any text (`/` included, empty
/// too), as Envoy's URI templates translate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'p> {
    Text(&'p str),
    One,
    Rest,
}

fn template(pattern: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(i) = rest.find('{') {
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        if rest[i..].starts_with("{**}") {
            out.push(Piece::Rest);
            rest = &rest[i + 4..];
        } else if rest[i..].starts_with("{*}") {
            out.push(Piece::One);
            rest = &rest[i + 3..];
        } else {
            out.push(Piece::Text(&rest[i..]));
            rest = "";
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

fn template_match(pieces: &[Piece<'_>], path: &str) -> bool {
    match pieces.split_first() {
        None => path.is_empty(),
        Some((Piece::Text(t), rest)) => path
            .strip_prefix(t)
            .is_some_and(|p| template_match(rest, p)),
        Some((Piece::One, rest)) => {
            let end = path.find('/').unwrap_or(path.len());
            (1..=end).any(|n| template_match(rest, &path[n..]))
        }
        Some((Piece::Rest, rest)) => (0..=path.len())
            .filter(|&n| path.is_char_boundary(n))
            .any(|n| template_match(rest, &path[n..])),
    }
}

/// Why `pattern` is not a valid path template (Istio's rules), if it is one.
fn template_error(pattern: &str) -> Option<String> {
    if !pattern.contains('{') && !pattern.contains('}') {
        return None;
    }
    let mut seen_rest = false;
    for seg in pattern.split('/') {
        match seg {
            "{*}" | "{**}" if seen_rest => {
                return Some(format!(
                    "`{{**}}` must be the last operator in path `{pattern}`"
                ));
            }
            "{**}" => seen_rest = true,
            "{*}" => {}
            s if s.contains(['{', '}', '*']) => {
                return Some(format!(
                    "path `{pattern}`: a segment with `{{*}}` or `{{**}}` must hold only the operator, and `*` may not appear outside one"
                ));
            }
            _ => {}
        }
    }
    None
}

fn path_match(pattern: &str, path: &str) -> bool {
    if pattern.contains("{*}") || pattern.contains("{**}") {
        return template_match(&template(pattern), path);
    }
    string_match(pattern, path)
}

fn valid_block(b: &str) -> bool {
    let (ip, prefix) = b.split_once('/').unwrap_or((b, ""));
    match ip.parse::<std::net::IpAddr>() {
        Ok(addr) => {
            prefix.is_empty()
                || prefix
                    .parse::<u8>()
                    .is_ok_and(|p| p <= if addr.is_ipv4() { 32 } else { 128 })
        }
        Err(_) => false,
    }
}

/// An Istio block as a CIDR: a bare address is a block of one.
fn block_cidr(block: &str) -> String {
    if block.contains('/') {
        block.to_string()
    } else if block.contains(':') {
        format!("{block}/128")
    } else {
        format!("{block}/32")
    }
}

fn ip_in(block: &str, ip: &str) -> bool {
    if ip.is_empty() {
        return false;
    }
    crate::builtins::net::contains(&block_cidr(block), ip).unwrap_or(false)
}

/// `values` match if any matches; `not_values` if none does (each only when given).
fn field(values: &[String], not_values: &[String], matches: impl Fn(&str) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| matches(v)))
        && !not_values.iter().any(|v| matches(v))
}

fn namespace_of(principal: &str) -> &str {
    let segs: Vec<&str> = principal.split('/').collect();
    match segs.as_slice() {
        [_, "ns", ns, "sa", _] => ns,
        _ => "",
    }
}

fn service_account_of(principal: &str) -> String {
    let segs: Vec<&str> = principal.split('/').collect();
    match segs.as_slice() {
        [_, "ns", ns, "sa", sa] => format!("{ns}/{sa}"),
        _ => String::new(),
    }
}

fn source_matches(s: &Source, r: &Request<'_>) -> bool {
    let p = r.principal.as_str();
    let rp = r.request_principal.as_deref().unwrap_or("");
    let td = p.split('/').next().unwrap_or("");
    field(&s.principals, &s.not_principals, |v| string_match(v, p))
        && field(&s.request_principals, &s.not_request_principals, |v| {
            string_match(v, rp)
        })
        && field(&s.namespaces, &s.not_namespaces, |v| {
            string_match(v, namespace_of(p))
        })
        && field(&s.service_accounts, &s.not_service_accounts, |v| {
            !p.is_empty() && v == service_account_of(p)
        })
        && field(&s.trust_domains, &s.not_trust_domains, |v| {
            string_match(v, td)
        })
        && field(&s.ip_blocks, &s.not_ip_blocks, |v| ip_in(v, &r.source_ip))
        // Without trusted proxies (Istio's default numTrustedProxies 0) the remote address is
        // the peer's.
        && field(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |v| {
            ip_in(v, &r.source_ip)
        })
}

/// Istio `hosts`: istiod turns each into a case-insensitive matcher on `:authority` (exact,
/// `prefix*`, `*suffix`; `*` is a presence match), so the port is part of what is matched
/// (`shop.example.com:8080` is not `shop.example.com`). With `also_canonical`, the canonical
/// spelling matches too (`Shop.example.com.` for `shop.example.com`): used where a match
/// restricts access (DENY `hosts`, ALLOW `notHosts`), so a second spelling of a host can never
/// slip past a rule about it, while a match that grants access is exactly Envoy's.
fn host_matches(pattern: &str, host: &crate::path::Host, also_canonical: bool) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    string_match(&pattern, &host.authority)
        || (also_canonical && string_match(&pattern, &host.canonical()))
}

/// `deny`: the rule belongs to a DENY policy, where a match takes access away.
fn operation_matches(o: &Operation, r: &Request<'_>, deny: bool) -> bool {
    let port = r.destination_port.to_string();
    (o.hosts.is_empty() || o.hosts.iter().any(|v| host_matches(v, &r.host, deny)))
        && !o.not_hosts.iter().any(|v| host_matches(v, &r.host, !deny))
        && field(&o.ports, &o.not_ports, |v| v == port)
        && field(&o.methods, &o.not_methods, |v| string_match(v, r.method))
        && field(&o.paths, &o.not_paths, |v| path_match(v, r.path))
}

/// The claim at `request.auth.claims[a][b]…`.
fn claim<'j>(claims: &'j Json, path: &[String]) -> Option<&'j Json> {
    path.iter().try_fold(claims, |v, k| v.get(k))
}

/// `request.headers[x-a]` → ("request.headers", ["x-a"]).
fn parse_key(key: &str) -> (String, Vec<String>) {
    match key.find('[') {
        Some(i) => {
            let base = key[..i].to_string();
            let parts = key[i..]
                .split(']')
                .filter_map(|p| p.strip_prefix('['))
                .map(str::to_string)
                .collect();
            (base, parts)
        }
        None => (key.to_string(), Vec::new()),
    }
}

const CONDITION_KEYS: &[&str] = &[
    "request.headers",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// Whether a header pattern matches. Envoy's RBAC filter (1.40) matches each header line on its
/// own and any line may match (checked against real Envoy in the differential test). When only
/// Envoy's comma-joined value is known, the lines are not: a match that takes access away
/// (`restrictive`) also tries every run of comma-separated pieces, which includes every line
/// the value could have been joined from; a match that grants access tries the value as sent.
fn header_matches(pattern: &str, values: &[String], lines_known: bool, restrictive: bool) -> bool {
    if pattern == "*" {
        // istiod turns `*` on a header into Envoy's presence match: an empty value is present.
        return !values.is_empty();
    }
    values.iter().any(|v| {
        string_match(pattern, v)
            || (!lines_known && restrictive && v.contains(',') && some_run_matches(pattern, v))
    })
}

/// Whether a run of comma-separated pieces of `v` (`a`, `a,b`, `b`, … of `a,b`) matches an
/// Istio pattern — in time linear in `v`, whatever the number of pieces: a run starts at the
/// start or after a comma and ends at the end or before one, so an exact pattern must occur
/// with such edges, a prefix start at such a place, a suffix end at one.
fn some_run_matches(pattern: &str, v: &str) -> bool {
    let at_start = |i: usize| i == 0 || v.as_bytes()[i - 1] == b',';
    let at_end = |e: usize| e == v.len() || v.as_bytes()[e] == b',';
    if let Some(prefix) = pattern.strip_suffix('*') {
        return std::iter::once(0)
            .chain(v.match_indices(',').map(|(i, _)| i + 1))
            .any(|i| v[i..].starts_with(prefix));
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return v
            .match_indices(',')
            .map(|(i, _)| i)
            .chain(std::iter::once(v.len()))
            .any(|e| v[..e].ends_with(suffix));
    }
    v.match_indices(pattern)
        .any(|(i, m)| at_start(i) && at_end(i + m.len()))
}

/// `deny`: the rule belongs to a DENY policy (where `values` take access away; in an ALLOW
/// policy `notValues` do).
fn condition_matches(c: &Condition, r: &Request<'_>, deny: bool) -> bool {
    let (base, parts) = parse_key(&c.key);
    // Every value the attribute has (a claim may be a list); none when absent.
    let values: Vec<String> = match base.as_str() {
        "request.headers" => r
            .headers
            .iter()
            .filter(|(k, _)| parts.first().is_some_and(|n| k.eq_ignore_ascii_case(n)))
            .map(|(_, v)| v.clone())
            .collect(),
        "source.ip" | "remote.ip" => vec![r.source_ip.clone()],
        "destination.ip" => vec![r.destination_ip.clone()],
        "destination.port" => vec![r.destination_port.to_string()],
        "source.namespace" => vec![namespace_of(&r.principal).to_string()],
        "source.principal" => vec![r.principal.clone()],
        "request.auth.principal" => r.request_principal.iter().cloned().collect(),
        "connection.sni" => vec![r.sni.clone()],
        "request.auth.claims" => match r.claims.and_then(|c| claim(c, &parts)) {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Json::String(s)) => vec![s.clone()],
            Some(other) if !other.is_null() => vec![other.to_string()],
            _ => Vec::new(),
        },
        "request.auth.audiences" => match r.claims.and_then(|c| c.get("aud")) {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Json::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        },
        "request.auth.presenter" => r
            .claims
            .and_then(|c| c.get("azp"))
            .and_then(Json::as_str)
            .map(str::to_string)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    let ip_key = matches!(base.as_str(), "source.ip" | "remote.ip" | "destination.ip");
    if base == "request.headers" {
        let hit = |p: &str, restrictive| header_matches(p, &values, r.header_lines, restrictive);
        return (c.values.is_empty() || c.values.iter().any(|p| hit(p, deny)))
            && !c.not_values.iter().any(|p| hit(p, !deny));
    }
    let hit = |pattern: &str| {
        values.iter().any(|v| {
            if ip_key {
                ip_in(pattern, v)
            } else {
                string_match(pattern, v)
            }
        })
    };
    (c.values.is_empty() || c.values.iter().any(|p| hit(p))) && !c.not_values.iter().any(|p| hit(p))
}

fn rule_matches(rule: &Rule, r: &Request<'_>, deny: bool) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, r)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, r, deny)))
        && rule.when.iter().all(|c| condition_matches(c, r, deny))
}

impl IstioPolicies {
    /// Whether `p` applies to the request's workload.
    fn applies(&self, p: &Policy, r: &Request<'_>) -> bool {
        let root = p.namespace == self.options.root_namespace;
        if !root && p.namespace != r.workload_namespace {
            return false;
        }
        if let Some(labels) = &p.match_labels
            && !labels
                .iter()
                .all(|(k, v)| r.workload_labels.get(k) == Some(v))
        {
            return false;
        }
        if !p.target_refs.is_empty() {
            let service = r.workload_labels.get("service").map(String::as_str);
            let gateway = r.workload_labels.get("gateway").map(String::as_str);
            return p.target_refs.iter().any(|t| match t.kind.as_str() {
                "Service" | "ServiceEntry" => service == Some(t.name.as_str()),
                "Gateway" | "GatewayClass" => gateway == Some(t.name.as_str()),
                _ => false,
            });
        }
        true
    }

    /// Decide as Istio's proxies do (with arbiter's default for workloads nothing allows).
    pub fn evaluate(&self, r: &Request<'_>) -> Verdict {
        let applicable: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| self.applies(p, r))
            .collect();
        let audit: Vec<String> = applicable
            .iter()
            .filter(|p| p.action == Action::Audit && !p.dry_run && matching_rule(p, r).is_some())
            .map(|p| p.id())
            .collect();
        let enforced: Vec<&Policy> = applicable.iter().copied().filter(|p| !p.dry_run).collect();
        let shadow: Vec<&Policy> = applicable.iter().copied().filter(|p| p.dry_run).collect();
        let dry_run = (!shadow.is_empty()).then(|| {
            let (allowed, decided_by, _) = decide(&shadow, r);
            DryRun {
                allowed: allowed.unwrap_or(true),
                decided_by,
            }
        });
        let (allowed, decided_by, note) = decide(&enforced, r);
        Verdict {
            allowed: allowed.unwrap_or(self.options.allow_without_allow_policies),
            abstained: allowed.is_none(),
            decided_by,
            audit,
            dry_run,
            note: match allowed {
                None if !self.options.allow_without_allow_policies => {
                    Some("no Istio ALLOW policy selects this workload".into())
                }
                _ => note,
            },
        }
    }
}

/// The first rule of `p` that matches.
fn matching_rule(p: &Policy, r: &Request<'_>) -> Option<usize> {
    p.rules.as_ref().and_then(|rules| {
        let deny = p.action == Action::Deny;
        rules.iter().position(|rule| rule_matches(rule, r, deny))
    })
}

/// DENY, then ALLOW, over `policies` (all applying to the workload). `None` when no DENY
/// matched and there is no ALLOW policy.
fn decide(
    policies: &[&Policy],
    r: &Request<'_>,
) -> (Option<bool>, Option<(String, usize)>, Option<String>) {
    for p in policies.iter().filter(|p| p.action == Action::Deny) {
        if let Some(i) = matching_rule(p, r) {
            return (Some(false), Some((p.id(), i)), None);
        }
    }
    let mut any_allow = false;
    for p in policies.iter().filter(|p| p.action == Action::Allow) {
        any_allow = true;
        if let Some(i) = matching_rule(p, r) {
            return (Some(true), Some((p.id(), i)), None);
        }
    }
    if any_allow {
        (
            Some(false),
            None,
            Some("no rule of the Istio ALLOW policies selecting this workload matched".into()),
        )
    } else {
        (None, None, None)
    }
}

/// Parse and check one file (several YAML documents). Errors fail the load; warnings are
/// Istio's best-practice advice.
pub fn parse(file: &str, text: &str) -> Result<(Vec<Policy>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let err =
        |line: u32, msg: String| Diagnostic::at(file, line, 0, msg).with_code("istio_policy_error");
    for (i, (offset, part)) in documents(text).into_iter().enumerate() {
        let located = |e: &yaml_serde::Error| {
            e.location().map_or((offset + 1, 0), |l| {
                (
                    offset + u32::try_from(l.line()).unwrap_or(0),
                    u32::try_from(l.column()).unwrap_or(0),
                )
            })
        };
        let value: Json = match yaml_serde::from_str(part) {
            Ok(v) => v,
            Err(e) => {
                let (l, c) = located(&e);
                errors.push(
                    Diagnostic::at(file, l, c, format!("invalid YAML: {e}"))
                        .with_code("istio_policy_error"),
                );
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(Json::as_str).unwrap_or("");
        let api = value.get("apiVersion").and_then(Json::as_str).unwrap_or("");
        let name_hint = value
            .pointer("/metadata/name")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let line = offset
            + if name_hint.is_empty() {
                1
            } else {
                line_of(part, &format!("name: {name_hint}"))
            };
        if kind != "AuthorizationPolicy" && api.starts_with("security.istio.io/") {
            // RequestAuthentication and PeerAuthentication configure Envoy's JWT and mTLS
            // filters, whose results arbiter receives: they sit in the same files.
            warnings.push(
                Diagnostic::at(file, line, 0, format!("document {} (`{kind}` `{name_hint}`) is not an AuthorizationPolicy: skipped (Envoy applies it before arbiter is asked)", i + 1))
                    .with_code("istio_policy_warning"),
            );
            continue;
        }
        if kind != "AuthorizationPolicy"
            || !matches!(api, "security.istio.io/v1" | "security.istio.io/v1beta1")
        {
            errors.push(err(
                line,
                format!("document {} is not a security.istio.io/v1 or v1beta1 AuthorizationPolicy (apiVersion `{api}`, kind `{kind}`)", i + 1),
            ));
            continue;
        }
        let doc: Document = match yaml_serde::from_str(part) {
            Ok(d) => d,
            Err(e) => {
                let (l, c) = located(&e);
                // The message without yaml's own (document-relative) position.
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg);
                errors.push(
                    Diagnostic::at(file, l, c, format!("`{name_hint}`: {msg}"))
                        .with_code("istio_policy_error"),
                );
                continue;
            }
        };
        let _ = (&doc.api_version, &doc.kind, &doc.spec.provider);
        let namespace = doc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let action = doc.spec.action.unwrap_or(Action::Allow);
        let id = format!("{namespace}/{}", doc.metadata.name);
        let mut target_refs = doc.spec.target_refs.clone();
        if let Some(t) = doc.spec.target_ref.clone() {
            target_refs.push(t);
        }
        if doc.spec.selector.is_some() && !target_refs.is_empty() {
            errors.push(err(
                line,
                format!("`{id}`: `selector` and `targetRefs` cannot be used together"),
            ));
        }
        if action == Action::Custom {
            warnings.push(
                Diagnostic::at(file, line, 0, format!("`{id}`: CUSTOM delegates to an external authorizer, which is arbiter itself here: loaded, not applied"))
                    .with_code("istio_policy_warning"),
            );
        }
        let mut rules = None;
        if let Some(specs) = &doc.spec.rules {
            let mut out = Vec::new();
            for (ri, rs) in specs.iter().enumerate() {
                let where_ = format!("`{id}` rule {ri}");
                for f in &rs.from {
                    let s = &f.source;
                    for p in s.principals.iter().chain(&s.not_principals) {
                        if p.starts_with("spiffe://") {
                            errors.push(err(line, format!("{where_}: principal `{p}` must not start with `spiffe://` (Istio principals are `<trust-domain>/ns/<ns>/sa/<sa>`)")));
                        }
                    }
                    if !s.service_accounts.is_empty()
                        && (!s.principals.is_empty() || !s.namespaces.is_empty())
                    {
                        errors.push(err(line, format!("{where_}: `serviceAccounts` cannot be combined with `principals` or `namespaces`")));
                    }
                    for b in s
                        .ip_blocks
                        .iter()
                        .chain(&s.not_ip_blocks)
                        .chain(&s.remote_ip_blocks)
                        .chain(&s.not_remote_ip_blocks)
                    {
                        if !valid_block(b) {
                            errors.push(err(
                                line,
                                format!("{where_}: `{b}` is not an IP address or CIDR block"),
                            ));
                        }
                    }
                }
                for t in &rs.to {
                    let o = &t.operation;
                    for p in o.ports.iter().chain(&o.not_ports) {
                        if p.parse::<u16>().is_err() {
                            errors.push(err(line, format!("{where_}: port `{p}` is not a number")));
                        }
                    }
                    for p in o.paths.iter().chain(&o.not_paths) {
                        if let Some(why) = template_error(p) {
                            errors.push(err(line, format!("{where_}: {why}")));
                        }
                    }
                }
                for c in &rs.when {
                    let (base, _) = parse_key(&c.key);
                    if !CONDITION_KEYS.contains(&base.as_str()) {
                        errors.push(err(
                            offset + line_of(part, &c.key),
                            format!("{where_}: unsupported condition key `{}`", c.key),
                        ));
                    }
                    if c.values.is_empty() && c.not_values.is_empty() {
                        errors.push(err(
                            offset + line_of(part, &c.key),
                            format!(
                                "{where_}: condition `{}` needs `values` or `notValues`",
                                c.key
                            ),
                        ));
                    }
                }
                // Istio's advice: ALLOW with only negative matching allows more than intended.
                let only_negative = |from: &[FromSpec], to: &[ToSpec]| {
                    let pos_from = from.iter().any(|f| {
                        let s = &f.source;
                        !(s.principals.is_empty()
                            && s.request_principals.is_empty()
                            && s.namespaces.is_empty()
                            && s.service_accounts.is_empty()
                            && s.trust_domains.is_empty()
                            && s.ip_blocks.is_empty()
                            && s.remote_ip_blocks.is_empty())
                    });
                    let pos_to = to.iter().any(|t| {
                        let o = &t.operation;
                        !(o.hosts.is_empty()
                            && o.ports.is_empty()
                            && o.methods.is_empty()
                            && o.paths.is_empty())
                    });
                    (!from.is_empty() || !to.is_empty()) && !pos_from && !pos_to
                };
                if action == Action::Allow
                    && only_negative(&rs.from, &rs.to)
                    && rs.when.iter().all(|c| c.values.is_empty())
                {
                    warnings.push(
                        Diagnostic::at(file, line, 0, format!("{where_}: an ALLOW rule with only `not…` fields allows everything else; prefer a DENY rule with positive matching"))
                            .with_code("istio_policy_warning"),
                    );
                }
                out.push(Rule {
                    from: rs.from.iter().map(|f| f.source.clone()).collect(),
                    to: rs.to.iter().map(|t| t.operation.clone()).collect(),
                    when: rs.when.clone(),
                });
            }
            rules = Some(out);
        }
        policies.push(Policy {
            file: file.to_string(),
            line,
            name: doc.metadata.name.clone(),
            namespace,
            action,
            match_labels: doc.spec.selector.map(|s| s.match_labels),
            target_refs,
            rules,
            dry_run: doc
                .metadata
                .annotations
                .get("istio.io/dry-run")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        });
    }
    if errors.is_empty() {
        Ok((policies, warnings))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests;
