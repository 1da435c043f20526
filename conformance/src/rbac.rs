//! Istio `AuthorizationPolicy` → Envoy RBAC filter configuration, written from istiod's
//! translation (istio/istio `pilot/pkg/security/authz/model/{model,generator,permission,
//! principal}.go` and `pilot/pkg/security/authz/matcher/{header,string}.go`), for a sidecar
//! (`useAuthenticated`: principals are the peer certificate's URI SAN).
//!
//! Real Envoy running these filters is the oracle of the differential test
//! (`tests/istio_differential.rs`). The translation is independent of arbiter's Istio
//! evaluator: it produces Envoy's configuration and lets Envoy decide.
//!
//! - Each rule is one RBAC policy: its permissions are one per `to` (or the `when` conditions
//!   that belong to permissions alone), its principals one per `from`; within one, every field
//!   given is ANDed, a field's values ORed, `notValues` a `not` of their OR.
//! - `hosts` → `:authority` header matchers, case-insensitive, port included; `methods` →
//!   `:method`; `*` on a header is a presence match; elsewhere `*` is the regex `.+`,
//!   `x*` a prefix, `*x` a suffix.
//! - `principals` → `authenticated.principal_name` with `spiffe://` prepended; `namespaces` →
//!   the regex `.*/ns/<ns>/.*`; `requestPrincipals` and `request.auth.*` → metadata matchers on
//!   `envoy.filters.http.jwt_authn`'s `payload`.
//! - DENY policies go to one RBAC filter with action DENY, ALLOW policies to a second with
//!   action ALLOW, which istiod leaves out when no ALLOW policy selects the workload (Istio
//!   then allows). AUDIT, CUSTOM and dry-run policies do not change Envoy's answer and are
//!   left out.

use std::collections::BTreeMap;

use arbiter_engine::istio::{Action, Condition, Operation, Policy, Rule, Source};
use serde_json::{Value as Json, json};

/// The workload a sidecar serves: its namespace and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Why a policy cannot be translated (a field istiod has no sidecar matcher for here).
pub type Untranslatable = String;

/// The two RBAC filter configurations (`envoy.extensions.filters.http.rbac.v3.RBAC`) istiod
/// would give this workload's sidecar: `(deny, allow)`; `allow` is `None` when no ALLOW policy
/// selects it.
pub fn rbac_filters(
    policies: &[Policy],
    workload: &Workload,
    root_namespace: &str,
) -> Result<(Json, Option<Json>), Untranslatable> {
    let mut deny = serde_json::Map::new();
    let mut allow = serde_json::Map::new();
    let mut any_allow = false;
    for p in policies {
        if !selects(p, workload, root_namespace)? || p.dry_run {
            continue;
        }
        let (target, action) = match p.action {
            Action::Deny => (&mut deny, "DENY"),
            Action::Allow => {
                any_allow = true;
                (&mut allow, "ALLOW")
            }
            Action::Audit | Action::Custom => continue,
        };
        for (i, rule) in p.rules.iter().flatten().enumerate() {
            let name = format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace, p.name);
            target.insert(name, policy(rule, &p.namespace, action)?);
        }
    }
    let filter = |action: &str, policies: serde_json::Map<String, Json>| json!({"rules": {"action": action, "policies": policies}});
    Ok((
        filter("DENY", deny),
        any_allow.then(|| filter("ALLOW", allow)),
    ))
}

/// istiod's workload selection: the root namespace applies everywhere, others to their own
/// namespace; `selector.matchLabels` must all be labels of the workload.
fn selects(p: &Policy, w: &Workload, root: &str) -> Result<bool, Untranslatable> {
    if !p.target_refs.is_empty() {
        return Err(format!("{}: targetRefs (waypoints and gateways)", p.id()));
    }
    if p.namespace != root && p.namespace != w.namespace {
        return Ok(false);
    }
    Ok(p.match_labels.as_ref().is_none_or(|labels| {
        labels
            .iter()
            .all(|(k, v)| w.labels.get(k).is_some_and(|x| x == v))
    }))
}

/// Envoy's `StringMatcher` for an Istio value: `*` → `.+`, `x*` prefix, `*x` suffix, exact.
fn string_matcher(v: &str, prefix: &str) -> Json {
    if v == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(s) = v.strip_prefix('*') {
        json!({"suffix": format!("{prefix}{s}")})
    } else if let Some(s) = v.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{s}")})
    } else {
        json!({"exact": format!("{prefix}{v}")})
    }
}

fn regex(r: &str) -> Json {
    json!({"safe_regex": {"regex": r}})
}

/// `HeaderMatcher`: `*` is a presence match.
fn header(name: &str, v: &str, ignore_case: bool) -> Json {
    if v == "*" {
        return json!({"name": name, "present_match": true});
    }
    let mut m = string_matcher(v, "");
    if ignore_case {
        m["ignore_case"] = Json::Bool(true);
    }
    json!({"name": name, "string_match": m})
}

fn cidr(v: &str) -> Result<Json, Untranslatable> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().map_err(|e| format!("{v}: {e}"))?),
        None if v.contains(':') => (v, 128),
        None => (v, 32),
    };
    Ok(json!({"address_prefix": addr, "prefix_len": len}))
}

fn jwt(claims: &[&str], value: Json) -> Json {
    let mut path: Vec<Json> = vec![json!({"key": "payload"})];
    path.extend(claims.iter().map(|c| json!({"key": c})));
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": path, "value": value}})
}

/// A claim that is a string or a list holding a matching string (istiod's
/// `MetadataListValueMatcher`).
fn jwt_list(claims: &[&str], values: &[String]) -> Json {
    let strings: Vec<Json> = values
        .iter()
        .map(|v| json!({"string_match": string_matcher(v, "")}))
        .collect();
    let one_of: Vec<Json> = values
        .iter()
        .map(|v| json!({"list_match": {"one_of": {"string_match": string_matcher(v, "")}}}))
        .collect();
    let all: Vec<Json> = strings.into_iter().chain(one_of).collect();
    jwt(claims, json!({"or_match": {"value_matchers": all}}))
}

/// `iss/sub` of `requestPrincipals` (istiod's `requestPrincipalGenerator`).
fn request_principal(v: &str) -> Json {
    let any = regex(".+");
    let (iss, sub, found) = match v.rfind('/') {
        Some(i) => (&v[..i], &v[i + 1..], true),
        None => (v, "", false),
    };
    let (mi, ms) = if v == "*" {
        (any.clone(), any)
    } else if v.starts_with('*') {
        if found {
            let mi = if iss == "*" {
                any
            } else {
                json!({"suffix": iss.trim_start_matches('*')})
            };
            (mi, json!({"exact": sub}))
        } else {
            (any, json!({"suffix": v.trim_start_matches('*')}))
        }
    } else if v.ends_with('*') {
        if found {
            let ms = if sub == "*" {
                any
            } else {
                json!({"prefix": sub.trim_end_matches('*')})
            };
            (json!({"exact": iss}), ms)
        } else {
            (json!({"prefix": v.trim_end_matches('*')}), any)
        }
    } else {
        (json!({"exact": iss}), json!({"exact": sub}))
    };
    json!({"and_ids": {"ids": [
        jwt(&["iss"], json!({"string_match": mi})),
        jwt(&["sub"], json!({"string_match": ms})),
    ]}})
}

fn authenticated(m: Json) -> Json {
    json!({"authenticated": {"principal_name": m}})
}

fn namespace_principal(v: &str) -> Json {
    authenticated(regex(&format!(".*/ns/{}/.*", v.replace('*', ".*"))))
}

fn service_account_principal(policy_ns: &str, v: &str) -> Json {
    let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
    authenticated(regex(&format!("spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?")))
}

/// `values` ORed, `notValues` a `not` of their OR; nothing when both are empty.
fn field<F>(
    out: &mut Vec<Json>,
    values: &[String],
    not_values: &[String],
    kind: Kind,
    mut one: F,
) -> Result<(), Untranslatable>
where
    F: FnMut(&str) -> Result<Json, Untranslatable>,
{
    let (or, not) = match kind {
        Kind::Permission => ("or_rules", "not_rule"),
        Kind::Principal => ("or_ids", "not_id"),
    };
    let list = |k: Kind, items: Vec<Json>| match k {
        Kind::Permission => json!({ or: {"rules": items} }),
        Kind::Principal => json!({ or: {"ids": items} }),
    };
    if !values.is_empty() {
        let items = values.iter().map(|v| one(v)).collect::<Result<_, _>>()?;
        out.push(list(kind, items));
    }
    if !not_values.is_empty() {
        let items = not_values
            .iter()
            .map(|v| one(v))
            .collect::<Result<_, _>>()?;
        out.push(json!({ not: list(kind, items) }));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Permission,
    Principal,
}

fn path_permission(v: &str) -> Json {
    if v.contains("{*}") || v.contains("{**}") {
        let template = v.replace("{**}", "**").replace("{*}", "*");
        return json!({"uri_template": {"name": "uri-template", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": template}}});
    }
    json!({"url_path": {"path": string_matcher(v, "")}})
}

fn operation(o: &Operation, out: &mut Vec<Json>) -> Result<(), Untranslatable> {
    let p = Kind::Permission;
    field(out, &o.hosts, &o.not_hosts, p, |v| {
        Ok(json!({"header": header(":authority", v, true)}))
    })?;
    field(out, &o.methods, &o.not_methods, p, |v| {
        Ok(json!({"header": header(":method", v, false)}))
    })?;
    field(out, &o.paths, &o.not_paths, p, |v| Ok(path_permission(v)))?;
    field(out, &o.ports, &o.not_ports, p, |v| {
        Ok(json!({"destination_port": v.parse::<u32>().map_err(|e| format!("port {v}: {e}"))?}))
    })
}

fn source(s: &Source, policy_ns: &str, out: &mut Vec<Json>) -> Result<(), Untranslatable> {
    let p = Kind::Principal;
    if !s.trust_domains.is_empty() || !s.not_trust_domains.is_empty() {
        return Err("trustDomains".into());
    }
    field(out, &s.principals, &s.not_principals, p, |v| {
        Ok(authenticated(string_matcher(v, "spiffe://")))
    })?;
    field(
        out,
        &s.request_principals,
        &s.not_request_principals,
        p,
        |v| Ok(request_principal(v)),
    )?;
    field(out, &s.namespaces, &s.not_namespaces, p, |v| {
        Ok(namespace_principal(v))
    })?;
    field(out, &s.service_accounts, &s.not_service_accounts, p, |v| {
        Ok(service_account_principal(policy_ns, v))
    })?;
    field(out, &s.remote_ip_blocks, &s.not_remote_ip_blocks, p, |v| {
        Ok(json!({"remote_ip": cidr(v)?}))
    })?;
    field(out, &s.ip_blocks, &s.not_ip_blocks, p, |v| {
        Ok(json!({"direct_remote_ip": cidr(v)?}))
    })
}

/// A `when` condition, as a permission (`Some(true)`) or a principal.
fn condition(
    c: &Condition,
    policy_ns: &str,
    permissions: &mut Vec<Json>,
    principals: &mut Vec<Json>,
) -> Result<(), Untranslatable> {
    let key = c.key.as_str();
    let (perm, prin) = (Kind::Permission, Kind::Principal);
    let (vals, nots) = (&c.values, &c.not_values);
    let bracketed = |prefix: &str| -> Vec<String> {
        key[prefix.len()..]
            .split(']')
            .filter_map(|p| p.strip_prefix('['))
            .map(str::to_string)
            .collect()
    };
    match key {
        "destination.ip" => field(permissions, vals, nots, perm, |v| {
            Ok(json!({"destination_ip": cidr(v)?}))
        }),
        "destination.port" => field(permissions, vals, nots, perm, |v| {
            Ok(json!({"destination_port": v.parse::<u32>().map_err(|e| e.to_string())?}))
        }),
        "connection.sni" => field(permissions, vals, nots, perm, |v| {
            Ok(json!({"requested_server_name": string_matcher(v, "")}))
        }),
        "source.ip" => field(principals, vals, nots, prin, |v| {
            Ok(json!({"direct_remote_ip": cidr(v)?}))
        }),
        "remote.ip" => field(principals, vals, nots, prin, |v| {
            Ok(json!({"remote_ip": cidr(v)?}))
        }),
        "source.namespace" => field(principals, vals, nots, prin, |v| Ok(namespace_principal(v))),
        "source.principal" => field(principals, vals, nots, prin, |v| {
            Ok(authenticated(string_matcher(v, "spiffe://")))
        }),
        "request.auth.principal" => {
            field(principals, vals, nots, prin, |v| Ok(request_principal(v)))
        }
        "request.auth.audiences" | "request.auth.presenter" => {
            let claim = if key.ends_with("audiences") {
                "aud"
            } else {
                "azp"
            };
            // One matcher over all values (istiod's `StringOrMatcher`).
            if !vals.is_empty() {
                principals.push(jwt_list(&[claim], vals));
            }
            if !nots.is_empty() {
                principals.push(json!({"not_id": jwt_list(&[claim], nots)}));
            }
            Ok(())
        }
        k if k.starts_with("request.auth.claims[") => {
            let claims = bracketed("request.auth.claims");
            let claims: Vec<&str> = claims.iter().map(String::as_str).collect();
            if !vals.is_empty() {
                principals.push(jwt_list(&claims, vals));
            }
            if !nots.is_empty() {
                principals.push(json!({"not_id": jwt_list(&claims, nots)}));
            }
            Ok(())
        }
        k if k.starts_with("request.headers[") => {
            let name = bracketed("request.headers").concat();
            field(principals, vals, nots, prin, |v| {
                Ok(json!({"header": header(&name, v, false)}))
            })
        }
        other => {
            let _ = policy_ns;
            Err(format!("condition key `{other}`"))
        }
    }
}

/// One rule as an RBAC policy (istiod's `Model.Generate`).
fn policy(rule: &Rule, policy_ns: &str, _action: &str) -> Result<Json, Untranslatable> {
    let mut base_permissions = Vec::new();
    let mut base_principals = Vec::new();
    for c in &rule.when {
        condition(c, policy_ns, &mut base_permissions, &mut base_principals)?;
    }
    let and_rules = |mut rules: Vec<Json>| {
        if rules.is_empty() {
            rules.push(json!({"any": true}));
        }
        json!({"and_rules": {"rules": rules}})
    };
    let and_ids = |mut ids: Vec<Json>| {
        if ids.is_empty() {
            ids.push(json!({"any": true}));
        }
        json!({"and_ids": {"ids": ids}})
    };
    let mut permissions = Vec::new();
    for o in &rule.to {
        let mut out = Vec::new();
        operation(o, &mut out)?;
        out.extend(base_permissions.iter().cloned());
        permissions.push(and_rules(out));
    }
    if rule.to.is_empty() {
        permissions.push(and_rules(base_permissions.clone()));
    }
    let mut principals = Vec::new();
    for s in &rule.from {
        let mut out = Vec::new();
        source(s, policy_ns, &mut out)?;
        out.extend(base_principals.iter().cloned());
        principals.push(and_ids(out));
    }
    if rule.from.is_empty() {
        principals.push(and_ids(base_principals));
    }
    Ok(json!({"permissions": permissions, "principals": principals}))
}

/// The HTTP filters for Envoy's listener (list items indented 10 spaces): a DENY and an ALLOW
/// RBAC filter that enforce nothing by themselves; each route sets its workload's rules with
/// [`per_route`].
pub fn http_filters() -> String {
    let mut out = String::new();
    for name in ["istio.deny", "istio.allow"] {
        out.push_str(&format!(
            "          - name: {name}\n            typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC}}\n"
        ));
    }
    out
}

/// `typed_per_filter_config` entries (indented 20 spaces) for a route of this workload.
pub fn per_route(deny: &Json, allow: Option<&Json>) -> String {
    let per = |rbac: &Json| {
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
               "rbac": rbac})
        .to_string()
    };
    let mut out = format!("                  istio.deny: {}\n", per(deny));
    // Without ALLOW policies, istiod configures no ALLOW filter: an RBAC without rules
    // enforces nothing.
    let allow = allow.cloned().unwrap_or_else(|| json!({}));
    out.push_str(&format!("                  istio.allow: {}\n", per(&allow)));
    out
}
