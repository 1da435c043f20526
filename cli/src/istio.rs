//! `arbiter istio diff OLD NEW`: does a change of Istio AuthorizationPolicies open access, or
//! close it? Decided exactly (see [`arbiter_engine::istio::diff`]), with a request that shows
//! each difference, printed as a decision-test case `arbiter test` can run.

use std::io::Write;
use std::path::PathBuf;

use arbiter_engine::istio::diff::{Answer, Diff, Found, Witness, diff};
use arbiter_engine::istio::{IstioOptions, IstioPolicies};
use serde_json::{Value as Json, json};

use crate::Exit;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Whether some request is allowed by NEW and denied by OLD (new access), or the reverse
    /// (new denials), with a request that shows it; exact, or "unknown" where it cannot be.
    Diff(DiffArgs),
    /// Prove or refute invariants over a folder of AuthorizationPolicies: `--deny 'TERMS'`
    /// says every request matching all TERMS is denied, for every workload; a refuted one is
    /// shown with a request that breaks it.
    CheckInvariants(InvariantArgs),
}

#[derive(Debug, clap::Args)]
pub struct InvariantArgs {
    /// A file or folder of AuthorizationPolicies.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// An invariant: comma-separated `KEY=VALUE` terms, each optionally preceded by `not`;
    /// KEY is one of principal, namespace, service-account, trust-domain, ip, method, path,
    /// host, port, sni, header.NAME; VALUE is an Istio pattern (`exact`, `prefix*`, `*suffix`,
    /// `*`). A key given twice matches either value. Repeatable.
    #[arg(long = "deny", value_name = "TERMS", required = true)]
    pub deny: Vec<String>,
    #[command(flatten)]
    pub istio: IstioSettings,
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
}

/// How policies apply, as `serve` has it.
#[derive(Debug, clap::Args)]
pub struct IstioSettings {
    /// Istio's root namespace, as `serve --istio-root-namespace`.
    #[arg(long, default_value = "istio-system", value_name = "NS")]
    pub istio_root_namespace: String,
    /// As `serve --istio-allow-without-allow-policies`.
    #[arg(long)]
    pub istio_allow_without_allow_policies: bool,
}

impl IstioSettings {
    fn options(&self) -> IstioOptions {
        IstioOptions {
            root_namespace: self.istio_root_namespace.clone(),
            allow_without_allow_policies: self.istio_allow_without_allow_policies,
        }
    }
}

/// The output formats and CI gates of `arbiter replay`, which mean the same here (`new-access`:
/// some request gains access, or that cannot be ruled out; `any`: any difference, or one that
/// cannot be ruled out).
pub use crate::replay::{FailOn, Format};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The policies before: a file or folder of AuthorizationPolicies.
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The policies after.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    #[command(flatten)]
    pub istio: IstioSettings,
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Exit 1 when a request gains access (`new-access`) or any decision changes (`any`) —
    /// or when that cannot be ruled out.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub fail_on: Option<FailOn>,
}

pub fn run(cmd: &Command) -> Exit {
    match cmd {
        Command::Diff(a) => run_diff(a, &mut std::io::stdout().lock(), &mut std::io::stderr()),
        Command::CheckInvariants(a) => {
            run_invariants(a, &mut std::io::stdout().lock(), &mut std::io::stderr())
        }
    }
}

/// The rule an invariant's terms describe.
pub fn invariant_rule(terms: &str) -> Result<arbiter_engine::istio::Rule, String> {
    use arbiter_engine::istio::{Condition, Operation, Rule, Source};
    let mut source = Source::default();
    let mut op = Operation::default();
    let mut when: Vec<Condition> = Vec::new();
    for term in terms.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (negated, term) = match term.strip_prefix("not ") {
            Some(t) => (true, t.trim()),
            None => (false, term),
        };
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| format!("`{term}`: write KEY=VALUE"))?;
        let (key, value) = (key.trim(), value.trim().to_string());
        let field: &mut Vec<String> = match (key, negated) {
            ("principal", false) => &mut source.principals,
            ("principal", true) => &mut source.not_principals,
            ("namespace", false) => &mut source.namespaces,
            ("namespace", true) => &mut source.not_namespaces,
            ("service-account", false) => &mut source.service_accounts,
            ("service-account", true) => &mut source.not_service_accounts,
            ("trust-domain", false) => &mut source.trust_domains,
            ("trust-domain", true) => &mut source.not_trust_domains,
            ("ip", false) => &mut source.ip_blocks,
            ("ip", true) => &mut source.not_ip_blocks,
            ("method", false) => &mut op.methods,
            ("method", true) => &mut op.not_methods,
            ("path", false) => &mut op.paths,
            ("path", true) => &mut op.not_paths,
            ("host", false) => &mut op.hosts,
            ("host", true) => &mut op.not_hosts,
            ("port", false) => &mut op.ports,
            ("port", true) => &mut op.not_ports,
            (k, _) if k == "sni" || k.starts_with("header.") => {
                let key = match k.strip_prefix("header.") {
                    Some(name) if !name.is_empty() => format!("request.headers[{name}]"),
                    Some(_) => return Err("`header.` needs a header name: header.NAME".into()),
                    None => "connection.sni".to_string(),
                };
                let c = match when.iter_mut().find(|c| c.key == key) {
                    Some(c) => c,
                    None => {
                        when.push(Condition {
                            key,
                            values: Vec::new(),
                            not_values: Vec::new(),
                        });
                        when.last_mut().ok_or("no condition")?
                    }
                };
                if negated {
                    &mut c.not_values
                } else {
                    &mut c.values
                }
            }
            (other, _) => {
                return Err(format!(
                    "unknown key `{other}` (principal, namespace, service-account, trust-domain, ip, method, path, host, port, sni, header.NAME)"
                ));
            }
        };
        field.push(value);
    }
    let from = if source == Source::default() {
        Vec::new()
    } else {
        vec![source]
    };
    let to = if op == Operation::default() {
        Vec::new()
    } else {
        vec![op]
    };
    if from.is_empty() && to.is_empty() && when.is_empty() {
        return Err("an invariant needs at least one term".into());
    }
    Ok(Rule { from, to, when })
}

/// A rule without `from`, `to` or `when`: it matches every request.
fn match_all() -> arbiter_engine::istio::Rule {
    arbiter_engine::istio::Rule {
        from: Vec::new(),
        to: Vec::new(),
        when: Vec::new(),
    }
}

/// The policies whose decisions say what the invariant allows: DENY the requests it describes
/// (in the root namespace: every workload), ALLOW the rest.
fn invariant_set(rule: arbiter_engine::istio::Rule, options: &IstioOptions) -> IstioPolicies {
    use arbiter_engine::istio::{Action, Policy, Rule};
    let policy = |name: &str, action: Action, rule: Rule| Policy {
        file: "(invariant)".into(),
        line: 0,
        name: name.into(),
        namespace: options.root_namespace.clone(),
        action,
        match_labels: None,
        target_refs: Vec::new(),
        rules: Some(vec![rule]),
        dry_run: false,
    };
    IstioPolicies {
        policies: vec![
            policy("invariant", Action::Deny, rule),
            policy("everything-else", Action::Allow, match_all()),
        ],
        options: options.clone(),
    }
}

pub fn run_invariants(a: &InvariantArgs, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let options = a.istio.options();
    let set = match load(&a.dir, &options) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "arbiter istio check-invariants: {e}");
            return Exit::Usage;
        }
    };
    let mut results = Vec::new();
    let mut all_hold = true;
    for terms in &a.deny {
        let rule = match invariant_rule(terms) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(err, "arbiter istio check-invariants: --deny '{terms}': {e}");
                return Exit::Usage;
            }
        };
        // A request the invariant denies and the policies allow breaks it.
        let d = diff(&invariant_set(rule, &options), &set);
        let (verdict, detail) = match &d.new_access {
            Answer::None => ("proven", Json::Null),
            Answer::Unknown(why) => ("unknown", json!(why)),
            Answer::Found(f) => (
                "refuted",
                json!({
                    "request": f.request,
                    "decided": f.new,
                    "test_case": test_case(&format!("breaks: deny {terms}"), &f.request, true),
                }),
            ),
        };
        all_hold &= verdict == "proven";
        results.push(json!({"deny": terms, "verdict": verdict, "detail": detail}));
    }
    let text = match a.format {
        Format::Json => format!(
            "{:#}
",
            json!(results)
        ),
        Format::Pretty => {
            let mut s = String::new();
            for r in &results {
                let verdict = r["verdict"].as_str().unwrap_or_default();
                s.push_str(&format!(
                    "deny {}: {}
",
                    r["deny"].as_str().unwrap_or_default(),
                    verdict.to_uppercase()
                ));
                match verdict {
                    "refuted" => {
                        let w = &r["detail"]["request"];
                        s.push_str(&format!(
                            "  allowed: {} {} (host {}, port {}) from {} at {} to workload {}
  by {} rules[{}]
",
                            w["method"].as_str().unwrap_or_default(),
                            w["path"].as_str().unwrap_or_default(),
                            w["host"].as_str().unwrap_or_default(),
                            w["destination_port"],
                            w["principal"].as_str().unwrap_or("(no identity)"),
                            w["source_ip"].as_str().unwrap_or_default(),
                            w["namespace"].as_str().unwrap_or_default(),
                            r["detail"]["decided"]["policy"]
                                .as_str()
                                .unwrap_or("(no policy)"),
                            r["detail"]["decided"]["rule"],
                        ));
                    }
                    "unknown" => {
                        s.push_str(&format!(
                            "  because the policies test {}
",
                            r["detail"]
                        ));
                    }
                    _ => {}
                }
            }
            s
        }
    };
    if out.write_all(text.as_bytes()).is_err() {
        return Exit::Usage;
    }
    if all_hold { Exit::Ok } else { Exit::Failed }
}

/// The Istio policies under `path`, as `serve` loads them.
fn load(path: &PathBuf, options: &IstioOptions) -> Result<IstioPolicies, String> {
    let sources = arbiter_engine::PolicySources::discover(&[path]).map_err(|e| e.to_string())?;
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for f in &sources.istio {
        match arbiter_engine::istio::parse(&f.name, &f.text) {
            Ok((p, _)) => policies.extend(p),
            Err(e) => errors.extend(e.iter().map(ToString::to_string)),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    Ok(IstioPolicies {
        policies,
        options: options.clone(),
    })
}

pub fn run_diff(a: &DiffArgs, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let options = a.istio.options();
    let (old, new) = match (load(&a.old, &options), load(&a.new, &options)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(err, "arbiter istio diff: {e}");
            return Exit::Usage;
        }
    };
    let d = diff(&old, &new);
    let text = match a.format {
        Format::Json => format!("{:#}\n", to_json(&d)),
        Format::Pretty => pretty(&d),
    };
    if out.write_all(text.as_bytes()).is_err() {
        return Exit::Usage;
    }
    let open = |x: &Answer| !matches!(x, Answer::None);
    let failed = match a.fail_on {
        None => false,
        Some(FailOn::NewAccess) => open(&d.new_access),
        Some(FailOn::Any) => open(&d.new_access) || open(&d.new_denials),
    };
    if failed { Exit::Failed } else { Exit::Ok }
}

/// The witness as a decision-test case (`arbiter test`'s short form), expecting what `allowed`
/// says.
pub fn test_case(name: &str, w: &Witness, allowed: bool) -> Json {
    let mut request = json!({
        "method": w.method,
        "path": w.path,
        "host": w.host,
        "source_address": w.source_ip,
        "destination_address": w.destination_ip,
        "destination_port": w.destination_port,
    });
    if let Some(p) = &w.principal {
        request["principal"] = json!(p);
    }
    if !w.headers.is_empty() {
        // The short form holds one value per header: repeated lines are joined as Envoy joins
        // them, which a header condition reads as the lines when it restricts access.
        let mut h = serde_json::Map::new();
        for (k, v) in &w.headers {
            match h.get_mut(k) {
                Some(Json::String(s)) => {
                    s.push(',');
                    s.push_str(v);
                }
                _ => {
                    h.insert(k.clone(), json!(v));
                }
            }
        }
        request["headers"] = Json::Object(h);
    }
    let mut ext = serde_json::Map::new();
    ext.insert("namespace".into(), json!(w.namespace));
    for (k, v) in &w.labels {
        ext.insert(k.clone(), json!(v));
    }
    request["context_extensions"] = Json::Object(ext);
    if !w.sni.is_empty() {
        request["sni"] = json!(w.sni);
    }
    json!({"name": name, "request": request, "expect": {"allowed": allowed}})
}

fn found_json(f: &Found, name: &str) -> Json {
    json!({
        "request": f.request,
        "old": f.old,
        "new": f.new,
        "test_case_old": test_case(&format!("{name} (before)"), &f.request, f.old.allowed),
        "test_case_new": test_case(&format!("{name} (after)"), &f.request, f.new.allowed),
    })
}

fn answer_json(a: &Answer, name: &str) -> Json {
    match a {
        Answer::None => json!({"answer": "none"}),
        Answer::Found(f) => {
            let mut j = found_json(f, name);
            j["answer"] = json!("found");
            j
        }
        Answer::Unknown(why) => json!({"answer": "unknown", "because": why}),
    }
}

pub fn to_json(d: &Diff) -> Json {
    json!({
        "new_access": answer_json(&d.new_access, "new access"),
        "new_denials": answer_json(&d.new_denials, "new denial"),
        "requests_tried": d.tried,
    })
}

fn decided(d: &arbiter_engine::istio::diff::Decided) -> String {
    let verdict = if d.allowed { "allowed" } else { "denied" };
    match (&d.policy, d.rule) {
        (Some(p), Some(r)) => format!("{verdict} by {p} rules[{r}]"),
        _ if d.allowed => format!("{verdict} (no ALLOW policy selects the workload)"),
        _ => format!("{verdict} (no rule allowed it)"),
    }
}

fn pretty(d: &Diff) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (title, a, name) in [
        (
            "NEW ACCESS (denied before, allowed now)",
            &d.new_access,
            "new access",
        ),
        (
            "NEW DENIALS (allowed before, denied now)",
            &d.new_denials,
            "new denial",
        ),
    ] {
        match a {
            Answer::None => {
                let _ = writeln!(s, "{title}: none (exact)");
            }
            Answer::Unknown(why) => {
                let _ = writeln!(
                    s,
                    "{title}: unknown — none found, but the policies test what the search cannot enumerate: {}",
                    why.join("; ")
                );
            }
            Answer::Found(f) => {
                let w = &f.request;
                let _ = writeln!(s, "{title}: for example");
                let _ = writeln!(
                    s,
                    "  {} {} (host {}, port {}) from {} at {} to workload {} {}",
                    w.method,
                    w.path,
                    w.host,
                    w.destination_port,
                    w.principal.as_deref().unwrap_or("(no identity)"),
                    w.source_ip,
                    w.namespace,
                    serde_json::to_string(&w.labels).unwrap_or_default()
                );
                for (k, v) in &w.headers {
                    let _ = writeln!(s, "    {k}: {v}");
                }
                let _ = writeln!(s, "  before: {}", decided(&f.old));
                let _ = writeln!(s, "  after:  {}", decided(&f.new));
                let case = test_case(&format!("{name} found by istio diff"), w, f.new.allowed);
                // JSON is YAML: a `*_test.yaml` file takes this list as it is.
                let yaml = serde_json::to_string_pretty(&vec![case]).unwrap_or_default();
                let _ = writeln!(s, "  as a decision test of the new policies (`cases:`):");
                for line in yaml.lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
    }
    let _ = writeln!(s, "({} requests tried)", d.tried);
    s
}
