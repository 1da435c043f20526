//! The `net.cidr_*` built-ins regorus lacks: `net.cidr_intersects`, `net.cidr_overlap` (OPA's
//! deprecated alias of `net.cidr_contains`), `net.cidr_merge` and `net.cidr_contains_matches`.
//! Parsing follows Go's `net.ParseCIDR`/`net.ParseIP`, whose behaviour OPA exposes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regorus::Value;

use super::{Registrar, string_arg};

/// An address family and a network inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    v6: bool,
    /// The address as given (Go keeps the unmasked address for bare IPs).
    ip: u128,
    prefix: u32,
}

impl Net {
    fn bits(&self) -> u32 {
        if self.v6 { 128 } else { 32 }
    }

    fn mask(&self) -> u128 {
        mask(self.bits(), self.prefix)
    }

    fn first(&self) -> u128 {
        self.ip & self.mask()
    }

    fn last(&self) -> u128 {
        self.first() | (!self.mask() & full(self.bits()))
    }

    fn contains_ip(&self, v6: bool, ip: u128) -> bool {
        self.v6 == v6 && (ip & self.mask()) == self.first()
    }

    fn format_with(&self, ip: u128) -> String {
        format!("{}/{}", ip_string(self.v6, ip), self.prefix)
    }
}

fn full(bits: u32) -> u128 {
    if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

fn mask(bits: u32, prefix: u32) -> u128 {
    if prefix == 0 {
        0
    } else if prefix >= bits {
        full(bits)
    } else {
        full(bits) & !(full(bits) >> prefix)
    }
}

fn ip_string(v6: bool, ip: u128) -> String {
    if v6 {
        Ipv6Addr::from(ip).to_string()
    } else {
        Ipv4Addr::from(u32::try_from(ip).unwrap_or(0)).to_string()
    }
}

fn parse_ip(s: &str) -> Option<(bool, u128)> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Some((false, u128::from(u32::from(a)))),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            // Go treats IPv4-mapped addresses as IPv4.
            Some(v4) => Some((false, u128::from(u32::from(v4)))),
            None => Some((true, u128::from(a))),
        },
    }
}

/// Go's `net.ParseCIDR`, returning the masked network.
fn parse_cidr(s: &str) -> anyhow::Result<Net> {
    let err = || anyhow::anyhow!("invalid CIDR address: {s}");
    let (ip, prefix) = s.split_once('/').ok_or_else(err)?;
    let (v6, ip) = parse_ip(ip).ok_or_else(err)?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let prefix: u32 = prefix.parse().map_err(|_| err())?;
    let net = Net { v6, ip, prefix };
    if prefix > net.bits() {
        return Err(err());
    }
    Ok(Net {
        ip: net.first(),
        ..net
    })
}

/// Go's `IP.DefaultMask`: the classful mask of an IPv4 address.
fn default_prefix(ip: u128) -> u32 {
    let first = (ip >> 24) & 0xff;
    if first < 0x80 {
        8
    } else if first < 0xc0 {
        16
    } else {
        24
    }
}

/// The first and last address of a CIDR block, read as [`contains`] reads it, and whether it
/// is IPv6: what `istio diff` cuts the address space with.
pub(crate) fn cidr_range(cidr: &str) -> Option<(bool, u128, u128)> {
    let n = parse_cidr(cidr).ok()?;
    Some((n.v6, n.first(), n.last()))
}

/// `net.cidr_contains(cidr, cidr_or_ip)`.
pub(crate) fn contains(cidr: &str, other: &str) -> anyhow::Result<bool> {
    let a = parse_cidr(cidr)?;
    if let Some((v6, ip)) = parse_ip(other) {
        return Ok(a.contains_ip(v6, ip));
    }
    let b = parse_cidr(other).map_err(|_| {
        anyhow::anyhow!("not a valid textual representation of an IP address or CIDR: {other}")
    })?;
    Ok(a.contains_ip(b.v6, b.first()) && a.contains_ip(b.v6, b.last()))
}

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("net.cidr_intersects", 2, |a| {
        let x = parse_cidr(string_arg(a, 1)?)?;
        let y = parse_cidr(string_arg(a, 2)?)?;
        Ok(Value::Bool(
            x.contains_ip(y.v6, y.first()) || y.contains_ip(x.v6, x.first()),
        ))
    });
    r.add("net.cidr_overlap", 2, |a| {
        let x = string_arg(a, 1)?;
        let y = string_arg(a, 2)?;
        Ok(Value::Bool(contains(x, y)?))
    });
    r.add("net.cidr_merge", 1, |a| cidr_merge(&a[0]));
    r.add("net.cidr_contains_matches", 2, |a| {
        contains_matches(&a[0], &a[1])
    });
}

fn cidr_merge(arg: &Value) -> anyhow::Result<Value> {
    let items: Vec<&Value> = match arg {
        Value::Array(a) => a.iter().collect(),
        Value::Set(s) => s.iter().collect(),
        _ => anyhow::bail!("operand must be an array"),
    };
    let mut nets = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            anyhow::bail!("element must be string");
        };
        let net = match parse_ip(s) {
            Some((false, ip)) => Net {
                v6: false,
                ip,
                prefix: default_prefix(ip),
            },
            Some((true, _)) => anyhow::bail!("IPv6 invalid: needs prefix length"),
            None => parse_cidr(s)?,
        };
        nets.push(net);
    }
    let mut out = Value::new_set();
    for v6 in [false, true] {
        for s in merge_family(nets.iter().filter(|n| n.v6 == v6).copied().collect()) {
            if let Ok(set) = out.as_set_mut() {
                set.insert(Value::from(s));
            }
        }
    }
    Ok(out)
}

/// Merge the networks of one family: sort by (last, first), fold ranges that touch or overlap,
/// then cut merged ranges back into CIDR blocks (netaddr's algorithm, as OPA uses it).
fn merge_family(nets: Vec<Net>) -> Vec<String> {
    struct Range {
        first: u128,
        last: u128,
        net: Option<Net>,
    }
    let Some(v6) = nets.first().map(|n| n.v6) else {
        return Vec::new();
    };
    let bits = if v6 { 128 } else { 32 };
    let mut ranges: Vec<Range> = nets
        .into_iter()
        .map(|n| Range {
            first: n.first(),
            last: n.last(),
            net: Some(n),
        })
        .collect();
    ranges.sort_by(|a, b| a.last.cmp(&b.last).then(a.first.cmp(&b.first)));
    let mut i = ranges.len();
    while i > 1 {
        i -= 1;
        let prev_ip = ranges[i].first.wrapping_sub(1) & full(bits);
        let touches = ranges[i].first == 0 || prev_ip <= ranges[i - 1].last;
        if touches {
            let first = ranges[i - 1].first.min(ranges[i].first);
            let last = ranges[i].last;
            ranges[i - 1] = Range {
                first,
                last,
                net: None,
            };
            ranges.remove(i);
        }
    }
    let mut out = Vec::new();
    for r in ranges {
        match r.net {
            Some(n) => out.push(n.format_with(n.ip)),
            None => {
                for (ip, prefix) in range_to_cidrs(r.first, r.last, bits) {
                    out.push(Net { v6, ip, prefix }.format_with(ip));
                }
            }
        }
    }
    out
}

/// The smallest list of aligned blocks covering `first..=last`.
fn range_to_cidrs(mut first: u128, last: u128, bits: u32) -> Vec<(u128, u32)> {
    let mut out = Vec::new();
    loop {
        if first > last {
            break;
        }
        // Largest block aligned at `first` that does not pass `last`.
        let mut size_bits = if first == 0 {
            bits
        } else {
            first.trailing_zeros().min(bits)
        };
        loop {
            let span_last = if size_bits >= 128 {
                u128::MAX
            } else {
                first | ((1u128 << size_bits) - 1)
            };
            if span_last <= last {
                out.push((first, bits - size_bits));
                if span_last == full(bits) || span_last == u128::MAX {
                    return out;
                }
                first = span_last + 1;
                break;
            }
            size_bits -= 1;
        }
    }
    out
}

/// The CIDRs of one operand of `net.cidr_contains_matches`, each with the index it reports.
fn match_operand(operand: usize, v: &Value) -> anyhow::Result<Vec<(String, Value)>> {
    let elem_cidr = |x: &Value| -> anyhow::Result<String> {
        match x {
            Value::String(s) => Ok(s.to_string()),
            Value::Array(a) if !a.is_empty() => match &a[0] {
                Value::String(s) => Ok(s.to_string()),
                _ => anyhow::bail!("operand {operand}: element must be string or non-empty array"),
            },
            _ => anyhow::bail!("operand {operand}: element must be string or non-empty array"),
        }
    };
    Ok(match v {
        Value::String(s) => vec![(s.to_string(), v.clone())],
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| Ok((elem_cidr(x)?, Value::from(i))))
            .collect::<anyhow::Result<_>>()?,
        Value::Set(s) => s
            .iter()
            .map(|x| Ok((elem_cidr(x)?, x.clone())))
            .collect::<anyhow::Result<_>>()?,
        Value::Object(o) => o
            .iter()
            .map(|(k, x)| Ok((elem_cidr(x)?, k.clone())))
            .collect::<anyhow::Result<_>>()?,
        _ => Vec::new(),
    })
}

fn contains_matches(a: &Value, b: &Value) -> anyhow::Result<Value> {
    let left = match_operand(1, a)?;
    let right = match_operand(2, b)?;
    let mut out = Value::new_set();
    for (c1, i1) in &left {
        for (c2, i2) in &right {
            if contains(c1, c2)?
                && let Ok(set) = out.as_set_mut()
            {
                set.insert(Value::from(vec![i1.clone(), i2.clone()]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    #[test]
    fn intersects() {
        assert_eq!(
            eval(r#"net.cidr_intersects("192.168.0.0/16", "192.168.1.0/24")"#).unwrap(),
            json!(true)
        );
        assert_eq!(
            eval(r#"net.cidr_intersects("10.0.0.0/8", "192.168.1.0/24")"#).unwrap(),
            json!(false)
        );
        assert!(eval(r#"net.cidr_intersects("nope", "10.0.0.0/8")"#).is_err());
    }

    #[test]
    fn merge() {
        assert_eq!(
            eval(r#"net.cidr_merge(["192.0.2.112/30", "192.0.2.116/31", "192.0.2.118/31"])"#)
                .unwrap(),
            json!(["192.0.2.112/29"])
        );
        assert_eq!(
            eval(r#"net.cidr_merge(["192.0.1.254/31", "192.0.2.0/28", "192.0.2.16/28", "192.0.2.32/28", "192.0.2.48/28", "192.0.2.64/28", "192.0.2.80/28", "192.0.2.96/28", "192.0.2.112/28", "192.0.2.128/28", "192.0.2.144/28", "192.0.2.160/28", "192.0.2.176/28", "192.0.2.192/28", "192.0.2.208/28", "192.0.2.224/28", "192.0.2.240/28", "192.0.3.0/28"])"#).unwrap(),
            json!(["192.0.1.254/31", "192.0.2.0/24", "192.0.3.0/28"])
        );
        assert_eq!(
            eval(r#"net.cidr_merge(["::/0", "fe80::1/128"])"#).unwrap(),
            json!(["::/0"])
        );
        assert_eq!(
            eval(r#"net.cidr_merge(["192.0.128.0", "192.0.129.0"])"#).unwrap(),
            json!(["192.0.128.0/23"])
        );
        assert!(eval(r#"net.cidr_merge(["fe80::1"])"#).is_err());
    }

    #[test]
    fn contains_matches() {
        assert_eq!(
            eval(r#"net.cidr_contains_matches(["10.0.0.0/8", "192.168.0.0/16"], ["10.1.2.3", "8.8.8.8", "192.168.3.0/24"])"#).unwrap(),
            json!([[0, 0], [1, 2]])
        );
        assert_eq!(
            eval(r#"net.cidr_contains_matches({"a": "10.0.0.0/8"}, "10.0.0.1")"#).unwrap(),
            json!([["a", "10.0.0.1"]])
        );
    }
}
