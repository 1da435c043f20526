//! CEL's network extension, as cel-go (`ext.Network()`) and Kubernetes name it: the types
//! `net.IP` and `net.CIDR`, `ip(s)`, `cidr(s)`, `isIP(s)`, `isCIDR(s)`, `ip.isCanonical(s)`,
//! `string(…)` of either, an address's `family()`, `isUnspecified()`, `isLoopback()`,
//! `isGlobalUnicast()`, `isLinkLocalMulticast()` and `isLinkLocalUnicast()` (Go's `netip`
//! definitions), and a range's `containsIP(ip or string)`, `containsCIDR(cidr or string)`,
//! `ip()`, `masked()` and `prefixLength()`.
//!
//! Parsing is strict, as in Kubernetes: no zone (`fe80::1%en0`), no IPv4-mapped IPv6 address
//! written with a dotted quad (`::ffff:1.2.3.4`), no leading zeros in an IPv4 octet. A mapped
//! address written in hex (`::ffff:c0a8:1`) is the IPv4 address it maps (`192.168.0.1`), as
//! the CEL spec's conformance tests expect.
//!
//! arbiter's own `net.cidr_contains(cidr, ip)` (shared with Rego's `net.cidr_contains`) stays;
//! these are the names Kyverno's and Kubernetes' CEL users already write.

use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cel::common::types::{CelBool, CelInt, CelString, Type};
use cel::common::value::{StaticVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

static IP_TYPE: Type = Type::new_unspecified_type("net.IP");
static CIDR_TYPE: Type = Type::new_unspecified_type("net.CIDR");

/// A `net.IP`: an IPv4 or IPv6 address, never a mapped one (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ip(IpAddr);

/// A `net.CIDR`: an address as written and a prefix length (`192.168.0.1/24`; `masked()`
/// zeroes the host bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Val for Ip {
    fn get_type(&self) -> &Type {
        &IP_TYPE
    }
    fn cel_type() -> &'static Type {
        &IP_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Ip>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Ip {}

impl Val for Cidr {
    fn get_type(&self) -> &Type {
        &CIDR_TYPE
    }
    fn cel_type() -> &'static Type {
        &CIDR_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Cidr>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Cidr {}

/// Registers the types and functions on `env`.
pub fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_type(IP_TYPE.to_owned())?;
    env.add_type(CIDR_TYPE.to_owned())?;
    cel::add_overload!(env, fn ip: (CelString) -> Result<Ip>, name = "ip")?;
    cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP")?;
    cel::add_overload!(env, fn is_canonical: (CelString) -> Result<CelBool>,
        name = "ip.isCanonical")?;
    cel::add_overload!(env, fn ip_string: (Ip) -> CelString, name = "string")?;
    cel::add_member_overload!(env, fn family: (Ip) -> CelInt, name = "family")?;
    cel::add_member_overload!(env, fn is_unspecified: (Ip) -> CelBool, name = "isUnspecified")?;
    cel::add_member_overload!(env, fn is_loopback: (Ip) -> CelBool, name = "isLoopback")?;
    cel::add_member_overload!(env, fn is_global_unicast: (Ip) -> CelBool,
        name = "isGlobalUnicast")?;
    cel::add_member_overload!(env, fn is_link_local_multicast: (Ip) -> CelBool,
        name = "isLinkLocalMulticast")?;
    cel::add_member_overload!(env, fn is_link_local_unicast: (Ip) -> CelBool,
        name = "isLinkLocalUnicast")?;
    cel::add_overload!(env, fn cidr: (CelString) -> Result<Cidr>, name = "cidr")?;
    cel::add_overload!(env, fn is_cidr: (CelString) -> CelBool, name = "isCIDR")?;
    cel::add_overload!(env, fn cidr_string: (Cidr) -> CelString, name = "string")?;
    cel::add_member_overload!(env, fn contains_ip: (Cidr, Ip) -> CelBool, name = "containsIP")?;
    cel::add_member_overload!(env, fn contains_ip_string: (Cidr, CelString) -> Result<CelBool>,
        name = "containsIP")?;
    cel::add_member_overload!(env, fn contains_cidr: (Cidr, Cidr) -> CelBool,
        name = "containsCIDR")?;
    cel::add_member_overload!(env, fn contains_cidr_string: (Cidr, CelString) -> Result<CelBool>,
        name = "containsCIDR")?;
    cel::add_member_overload!(env, fn cidr_ip: (Cidr) -> Ip, name = "ip")?;
    cel::add_member_overload!(env, fn masked: (Cidr) -> Cidr, name = "masked")?;
    cel::add_member_overload!(env, fn prefix_length: (Cidr) -> CelInt, name = "prefixLength")?;
    Ok(())
}

fn error(function: &str, message: impl Into<String>) -> ExecutionError {
    ExecutionError::function_error(function, message.into())
}

/// An IPv6 address written with a dotted quad at its end (`::ffff:1.2.3.4`).
fn dotted_v6(s: &str) -> bool {
    s.contains(':') && s.rsplit(':').next().is_some_and(|last| last.contains('.'))
}

/// The address `s` names, or why it names none (Kubernetes' and cel-go's words).
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    if s.contains('%') {
        return Err("IP Address with zone value is not allowed".into());
    }
    if dotted_v6(s) {
        return Err("IPv4-mapped IPv6 address is not allowed".into());
    }
    let parsed: IpAddr = s
        .parse()
        .map_err(|_| format!("IP Address '{s}' parse error during conversion from string"))?;
    Ok(unmapped(parsed))
}

/// A hex-written IPv4-mapped address as the IPv4 address it maps.
fn unmapped(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let invalid = || "network address parse error during conversion from string".to_string();
    if s.contains('%') {
        return Err("CIDR with zone value is not allowed".into());
    }
    let (addr, bits) = s.split_once('/').ok_or_else(invalid)?;
    if dotted_v6(addr) {
        return Err("IPv4-mapped IPv6 address is not allowed".into());
    }
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) || bits.len() > 3 {
        return Err(invalid());
    }
    let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
    let bits: u8 = bits.parse().map_err(|_| invalid())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(invalid());
    }
    Ok(Cidr { addr, bits })
}

fn ip(s: &CelString<'_>) -> Result<Ip, ExecutionError> {
    parse_ip(s.inner()).map(Ip).map_err(|e| error("ip", e))
}

fn is_ip(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_ip(s.inner()).is_ok())
}

fn is_canonical(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let addr = parse_ip(s.inner()).map_err(|e| error("ip.isCanonical", e))?;
    Ok(CelBool::from(addr.to_string() == s.inner()))
}

fn ip_string(ip: &Ip) -> CelString<'static> {
    ip.0.to_string().into()
}

fn family(ip: &Ip) -> CelInt {
    CelInt::from(if ip.0.is_ipv4() { 4 } else { 6 })
}

fn is_unspecified(ip: &Ip) -> CelBool {
    CelBool::from(ip.0.is_unspecified())
}

fn is_loopback(ip: &Ip) -> CelBool {
    CelBool::from(ip.0.is_loopback())
}

fn link_local_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Go's `netip.Addr.IsGlobalUnicast`: not unspecified, loopback, multicast, link-local
/// unicast or the IPv4 broadcast address (private addresses are global unicast).
fn is_global_unicast(ip: &Ip) -> CelBool {
    let a = ip.0;
    let broadcast = a == IpAddr::V4(Ipv4Addr::BROADCAST);
    CelBool::from(
        !(broadcast
            || a.is_unspecified()
            || a.is_loopback()
            || a.is_multicast()
            || link_local_unicast(a)),
    )
}

/// 224.0.0.0/24 and ff02::/16 (Go's `IsLinkLocalMulticast`).
fn is_link_local_multicast(ip: &Ip) -> CelBool {
    CelBool::from(match ip.0 {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    })
}

fn is_link_local_unicast(ip: &Ip) -> CelBool {
    CelBool::from(link_local_unicast(ip.0))
}

fn cidr(s: &CelString<'_>) -> Result<Cidr, ExecutionError> {
    parse_cidr(s.inner()).map_err(|e| error("cidr", e))
}

fn is_cidr(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_cidr(s.inner()).is_ok())
}

fn cidr_string(c: &Cidr) -> CelString<'static> {
    format!("{}/{}", c.addr, c.bits).into()
}

/// `addr` with all but its first `bits` bits zeroed.
fn mask(addr: IpAddr, bits: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

fn contains(c: &Cidr, addr: IpAddr) -> bool {
    c.addr.is_ipv4() == addr.is_ipv4() && mask(addr, c.bits) == mask(c.addr, c.bits)
}

fn contains_ip(c: &Cidr, ip: &Ip) -> CelBool {
    CelBool::from(contains(c, ip.0))
}

fn contains_ip_string(c: &Cidr, ip: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let addr = parse_ip(ip.inner()).map_err(|e| error("containsIP", e))?;
    Ok(CelBool::from(contains(c, addr)))
}

fn cidr_in(c: &Cidr, other: &Cidr) -> bool {
    c.bits <= other.bits && contains(c, other.addr)
}

fn contains_cidr(c: &Cidr, other: &Cidr) -> CelBool {
    CelBool::from(cidr_in(c, other))
}

fn contains_cidr_string(c: &Cidr, other: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let other = parse_cidr(other.inner()).map_err(|e| error("containsCIDR", e))?;
    Ok(CelBool::from(cidr_in(c, &other)))
}

fn cidr_ip(c: &Cidr) -> Ip {
    Ip(unmapped(c.addr))
}

fn masked(c: &Cidr) -> Cidr {
    Cidr {
        addr: mask(c.addr, c.bits),
        bits: c.bits,
    }
}

fn prefix_length(c: &Cidr) -> CelInt {
    CelInt::from(i64::from(c.bits))
}
