//! A `CheckRequest` read off the wire straight into the engine's request model.
//!
//! prost decoded Envoy's message into its own structs (a `String` for every field, a
//! `HashMap` with SipHash for every map), and the server then copied each of them into an
//! [`AuthzRequest`]: every string allocated twice and every header hashed once, on every
//! check. This reads the protobuf encoding once, into the model, with prost's semantics:
//! a field that appears twice overwrites (strings, numbers) or merges (messages, maps, with
//! the last value of a repeated key kept), unknown fields are skipped, a known field with
//! the wrong wire type and a string that is not UTF-8 are errors. The three sub-messages
//! Envoy rarely sends and whose conversion is not a copy (addresses, metadata, the header
//! map) are merged by prost itself and converted by [`crate::convert`]'s functions.
//!
//! This is the one converter from Envoy's `CheckRequest` to [`AuthzRequest`]: the gRPC
//! server decodes with it, and [`crate::convert::authz_request`] (a `CheckRequest` already
//! in memory: protobuf JSON, tests) encodes the message and reads it back through here.
//!
//! One difference from prost's decoding, on purpose: prost refuses a message nested more
//! than 100 deep, counting from the top; the delegated sub-messages here count from their
//! own start, so a metadata `Struct` nested 96 to 100 deep is accepted here and refused by
//! prost. Envoy's own messages never come near either limit.

use arbiter_engine::request::{Address, AuthzRequest, HttpRequest, Peer, Timestamp, TlsSession};
use envoy_types::pb::envoy::config::core::v3 as core;
use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, decode_varint};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// What prost says of a key, a varint, a wire type or a sub-message it decoded.
    #[error(transparent)]
    Protobuf(#[from] prost::DecodeError),
    #[error("a length-delimited field runs past the end of its message")]
    Truncated,
    #[error("a string field is not UTF-8")]
    NotUtf8,
}

type Result<T> = std::result::Result<T, WireError>;

/// The engine's request for a `CheckRequest`'s protobuf encoding.
pub fn authz_request(buf: &[u8]) -> Result<AuthzRequest> {
    let mut attributes: Option<Attributes> = None;
    fields(buf, |tag, wt, buf| {
        match tag {
            1 => attributes
                .get_or_insert_default()
                .merge(delimited(wt, buf)?)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(attributes.map(Attributes::finish).unwrap_or_default())
}

/// Each field of a message, given to `field` (its tag, its wire type, and the buffer to read
/// it from), which reads the ones it knows and says whether it did; the others are skipped,
/// as prost skips unknown fields.
fn fields(
    mut buf: &[u8],
    mut field: impl FnMut(u32, WireType, &mut &[u8]) -> Result<bool>,
) -> Result<()> {
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf)?;
        if !field(tag, wt, &mut buf)? {
            skip(wt, tag, &mut buf)?;
        }
    }
    Ok(())
}

/// `AttributeContext` as it is read: what needs converting at the end is kept in prost's form.
#[derive(Default)]
struct Attributes {
    source: Option<PeerFields>,
    destination: Option<PeerFields>,
    time: Option<Timestamp>,
    http: Option<HttpFields>,
    context_extensions: Vec<(String, String)>,
    metadata_context: Option<core::Metadata>,
    route_metadata_context: Option<core::Metadata>,
    tls_session: Option<TlsSession>,
}

#[derive(Default)]
struct PeerFields {
    address: Option<AddressFields>,
    service: String,
    labels: Vec<(String, String)>,
    principal: String,
    certificate: String,
}

/// `Peer.address` as it is read: the one Envoy sends (a socket address of an IP and a port,
/// once) directly, anything else (another kind, more fields, a second occurrence) merged by
/// prost into its own struct, as every sub-message Envoy rarely sends is.
enum AddressFields {
    Socket { address: String, port: Option<u32> },
    Prost(core::Address),
}

impl AddressFields {
    /// Merge one occurrence of the field (the message's bytes).
    fn merge(slot: &mut Option<AddressFields>, bytes: &[u8]) -> Result<()> {
        if slot.is_none()
            && let Some((address, port)) = plain_socket_address(bytes)
        {
            *slot = Some(AddressFields::Socket {
                address: address.to_string(),
                port,
            });
            return Ok(());
        }
        let mut merged = slot
            .take()
            .map(AddressFields::into_prost)
            .unwrap_or_default();
        prost::Message::merge(&mut merged, bytes)?;
        *slot = Some(AddressFields::Prost(merged));
        Ok(())
    }

    /// The address in prost's form: the one [`crate::convert::address`] converts.
    fn into_prost(self) -> core::Address {
        match self {
            AddressFields::Socket { address, port } => core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address,
                    port_specifier: port.map(core::socket_address::PortSpecifier::PortValue),
                    ..core::SocketAddress::default()
                })),
            },
            AddressFields::Prost(a) => a,
        }
    }

    fn finish(self) -> Option<Address> {
        self.into_prost().address.map(crate::convert::address)
    }
}

/// An `Address` that is one `socket_address` holding at most an address (a UTF-8 string) and
/// a port (a varint that fits 32 bits), each once: its address and port. `None` for any other
/// encoding, which prost then reads.
fn plain_socket_address(mut buf: &[u8]) -> Option<(&str, Option<u32>)> {
    let (tag, wt) = decode_key(&mut buf).ok()?;
    if tag != 1 {
        return None;
    }
    let mut socket = delimited(wt, &mut buf).ok()?;
    if !buf.is_empty() {
        return None;
    }
    let (mut address, mut port) = (None, None);
    while !socket.is_empty() {
        match decode_key(&mut socket).ok()? {
            (2, WireType::LengthDelimited) if address.is_none() => {
                let bytes = delimited(WireType::LengthDelimited, &mut socket).ok()?;
                address = Some(std::str::from_utf8(bytes).ok()?);
            }
            (3, WireType::Varint) if port.is_none() => {
                port = Some(u32::try_from(decode_varint(&mut socket).ok()?).ok()?);
            }
            _ => return None,
        }
    }
    Some((address.unwrap_or(""), port))
}

#[derive(Default)]
struct HttpFields {
    request: HttpRequest,
    header_map: Option<core::HeaderMap>,
}

impl Attributes {
    fn merge(&mut self, buf: &[u8]) -> Result<()> {
        fields(buf, |tag, wt, buf| {
            match tag {
                1 => self
                    .source
                    .get_or_insert_default()
                    .merge(delimited(wt, buf)?)?,
                2 => self
                    .destination
                    .get_or_insert_default()
                    .merge(delimited(wt, buf)?)?,
                4 => self.merge_request(delimited(wt, buf)?)?,
                10 => map_entry(&mut self.context_extensions, delimited(wt, buf)?)?,
                11 => merge_prost(self.metadata_context.get_or_insert_default(), wt, buf)?,
                12 => {
                    let sni = &mut self.tls_session.get_or_insert_default().sni;
                    fields(delimited(wt, buf)?, |tag, wt, tls| {
                        match tag {
                            1 => string(sni, wt, tls)?,
                            _ => return Ok(false),
                        }
                        Ok(true)
                    })?;
                }
                13 => merge_prost(self.route_metadata_context.get_or_insert_default(), wt, buf)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// `AttributeContext.Request`: its time and its HTTP request.
    fn merge_request(&mut self, buf: &[u8]) -> Result<()> {
        fields(buf, |tag, wt, buf| {
            match tag {
                1 => {
                    let time = self.time.get_or_insert_default();
                    fields(delimited(wt, buf)?, |tag, wt, t| {
                        match tag {
                            1 => time.seconds = varint(wt, t)? as i64,
                            2 => time.nanos = varint(wt, t)? as i32,
                            _ => return Ok(false),
                        }
                        Ok(true)
                    })?;
                }
                2 => self
                    .http
                    .get_or_insert_default()
                    .merge(delimited(wt, buf)?)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    fn finish(self) -> AuthzRequest {
        AuthzRequest {
            source: self.source.map(PeerFields::finish),
            destination: self.destination.map(PeerFields::finish),
            time: self.time,
            http: self.http.map(HttpFields::finish),
            context_extensions: last_of_each_sorted(self.context_extensions),
            metadata_context: self.metadata_context.as_ref().map(crate::convert::metadata),
            route_metadata_context: self
                .route_metadata_context
                .as_ref()
                .map(crate::convert::metadata),
            tls_session: self.tls_session,
        }
    }
}

impl PeerFields {
    fn merge(&mut self, buf: &[u8]) -> Result<()> {
        fields(buf, |tag, wt, buf| {
            match tag {
                1 => AddressFields::merge(&mut self.address, delimited(wt, buf)?)?,
                2 => string(&mut self.service, wt, buf)?,
                3 => map_entry(&mut self.labels, delimited(wt, buf)?)?,
                4 => string(&mut self.principal, wt, buf)?,
                5 => string(&mut self.certificate, wt, buf)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    fn finish(self) -> Peer {
        Peer {
            address: self.address.and_then(AddressFields::finish),
            service: self.service,
            labels: last_of_each_sorted(self.labels),
            principal: self.principal,
            certificate: self.certificate,
        }
    }
}

impl HttpFields {
    fn merge(&mut self, buf: &[u8]) -> Result<()> {
        let h = &mut self.request;
        fields(buf, |tag, wt, buf| {
            match tag {
                1 => string(&mut h.id, wt, buf)?,
                2 => string(&mut h.method, wt, buf)?,
                3 => {
                    // Room for the headers a request usually has, instead of growing from 4.
                    if h.headers.capacity() == 0 {
                        h.headers.reserve_exact(HEADERS_EXPECTED);
                    }
                    map_entry(&mut h.headers, delimited(wt, buf)?)?;
                }
                4 => string(&mut h.path, wt, buf)?,
                5 => string(&mut h.host, wt, buf)?,
                6 => string(&mut h.scheme, wt, buf)?,
                7 => string(&mut h.query, wt, buf)?,
                8 => string(&mut h.fragment, wt, buf)?,
                9 => h.size = varint(wt, buf)? as i64,
                10 => string(&mut h.protocol, wt, buf)?,
                11 => string(&mut h.body, wt, buf)?,
                12 => {
                    let bytes = delimited(wt, buf)?;
                    h.raw_body.clear();
                    h.raw_body.extend_from_slice(bytes);
                }
                13 => merge_prost(self.header_map.get_or_insert_default(), wt, buf)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    fn finish(self) -> HttpRequest {
        let mut request = self.request;
        request.headers = last_of_each_sorted(std::mem::take(&mut request.headers));
        request.header_map = self.header_map.as_ref().map(crate::convert::header_map);
        request
    }
}

/// How many headers the vector of a request's headers first has room for: Envoy sends a
/// dozen or so for an ordinary request.
const HEADERS_EXPECTED: usize = 16;

/// A length-delimited field's bytes.
fn delimited<'a>(wt: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    check_wire_type(WireType::LengthDelimited, wt)?;
    let len = decode_varint(buf)?;
    let Some(len) = usize::try_from(len).ok().filter(|&n| n <= buf.len()) else {
        return Err(WireError::Truncated);
    };
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

fn varint(wt: WireType, buf: &mut &[u8]) -> Result<u64> {
    check_wire_type(WireType::Varint, wt)?;
    Ok(decode_varint(buf)?)
}

/// A string field: the last occurrence wins, as in prost.
fn string(into: &mut String, wt: WireType, buf: &mut &[u8]) -> Result<()> {
    let bytes = delimited(wt, buf)?;
    let s = std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8)?;
    if into.capacity() == 0 {
        // The first occurrence (nearly always the only one): one allocation of its size.
        *into = s.to_owned();
    } else {
        into.clear();
        into.push_str(s);
    }
    Ok(())
}

/// One entry of a `map<string, string>`: a missing key or value is empty, as in prost.
fn map_entry(into: &mut Vec<(String, String)>, buf: &[u8]) -> Result<()> {
    let (mut key, mut value) = (String::new(), String::new());
    fields(buf, |tag, wt, buf| {
        match tag {
            1 => string(&mut key, wt, buf)?,
            2 => string(&mut value, wt, buf)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    into.push((key, value));
    Ok(())
}

/// A map's entries sorted by key, one per key: the last one read, as a `HashMap` keeps it.
fn last_of_each_sorted(mut entries: Vec<(String, String)>) -> Vec<(String, String)> {
    // A stable sort keeps the entries of one key in the order read.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(&mut later.1, &mut kept.1);
        }
        same
    });
    entries
}

/// A sub-message merged by prost into its own struct.
fn merge_prost<M: prost::Message>(into: &mut M, wt: WireType, buf: &mut &[u8]) -> Result<()> {
    Ok(prost::encoding::message::merge(
        wt,
        into,
        buf,
        DecodeContext::default(),
    )?)
}

fn skip(wt: WireType, tag: u32, buf: &mut &[u8]) -> Result<()> {
    Ok(prost::encoding::skip_field(
        wt,
        tag,
        buf,
        DecodeContext::default(),
    )?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arbiter_engine::request::{HttpRequest, Peer, SocketAddress, Timestamp, TlsSession};
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as auth;
    use envoy_types::pb::google::protobuf as pbuf;
    use prost::Message;

    use super::*;

    /// The conversion the server used before this module: prost's structs, copied. The
    /// oracle the wire reading is compared with.
    fn via_prost(req: &auth::CheckRequest) -> AuthzRequest {
        fn sorted(map: &HashMap<String, String>) -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> =
                map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            v.sort();
            v
        }
        fn peer(p: &auth::attribute_context::Peer) -> Peer {
            Peer {
                address: p
                    .address
                    .as_ref()
                    .and_then(|a| a.address.clone())
                    .map(crate::convert::address),
                service: p.service.clone(),
                labels: sorted(&p.labels),
                principal: p.principal.clone(),
                certificate: p.certificate.clone(),
            }
        }
        let Some(a) = &req.attributes else {
            return AuthzRequest::default();
        };
        let request = a.request.as_ref();
        AuthzRequest {
            source: a.source.as_ref().map(peer),
            destination: a.destination.as_ref().map(peer),
            time: request.and_then(|r| r.time.as_ref()).map(|t| Timestamp {
                seconds: t.seconds,
                nanos: t.nanos,
            }),
            http: request.and_then(|r| r.http.as_ref()).map(|h| HttpRequest {
                id: h.id.clone(),
                method: h.method.clone(),
                headers: sorted(&h.headers),
                header_map: h.header_map.as_ref().map(crate::convert::header_map),
                path: h.path.clone(),
                host: h.host.clone(),
                scheme: h.scheme.clone(),
                query: h.query.clone(),
                fragment: h.fragment.clone(),
                size: h.size,
                protocol: h.protocol.clone(),
                body: h.body.clone(),
                raw_body: h.raw_body.clone(),
            }),
            context_extensions: sorted(&a.context_extensions),
            metadata_context: a.metadata_context.as_ref().map(crate::convert::metadata),
            route_metadata_context: a
                .route_metadata_context
                .as_ref()
                .map(crate::convert::metadata),
            tls_session: a
                .tls_session
                .as_ref()
                .map(|t| TlsSession { sni: t.sni.clone() }),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn socket(address: &str, port: u32) -> core::Address {
        core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: address.into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                ..core::SocketAddress::default()
            })),
        }
    }

    fn metadata(key: &str, field: &str, value: pbuf::value::Kind) -> core::Metadata {
        core::Metadata {
            filter_metadata: HashMap::from([(
                key.to_string(),
                pbuf::Struct {
                    fields: HashMap::from([(field.to_string(), pbuf::Value { kind: Some(value) })]),
                },
            )]),
            ..core::Metadata::default()
        }
    }

    /// Requests that set every field the reading handles, and some that set few.
    fn requests() -> Vec<auth::CheckRequest> {
        use auth::attribute_context as ac;
        let full = auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                source: Some(ac::Peer {
                    address: Some(socket("10.0.0.1", 40000)),
                    service: "frontend".into(),
                    labels: map(&[("app", "web"), ("tier", "1")]),
                    principal: "spiffe://cluster.local/ns/a/sa/b".into(),
                    certificate: "-----BEGIN CERTIFICATE-----".into(),
                }),
                destination: Some(ac::Peer {
                    address: Some(core::Address {
                        address: Some(core::address::Address::Pipe(core::Pipe {
                            path: "/run/s.sock".into(),
                            mode: 0o600,
                        })),
                    }),
                    ..ac::Peer::default()
                }),
                request: Some(ac::Request {
                    time: Some(pbuf::Timestamp {
                        seconds: 1_767_323_045,
                        nanos: -7,
                    }),
                    http: Some(ac::HttpRequest {
                        id: "42".into(),
                        method: "POST".into(),
                        headers: map(&[
                            (":authority", "shop.example"),
                            (":path", "/a/b?c=d"),
                            ("x-é", "ünï"),
                            ("authorization", "Bearer x.y.z"),
                        ]),
                        header_map: Some(core::HeaderMap {
                            headers: vec![
                                core::HeaderValue {
                                    key: "x-a".into(),
                                    value: "1".into(),
                                    raw_value: Vec::new(),
                                },
                                core::HeaderValue {
                                    key: "x-a".into(),
                                    value: String::new(),
                                    raw_value: b"2".to_vec(),
                                },
                            ],
                        }),
                        path: "/a/b?c=d".into(),
                        host: "shop.example".into(),
                        scheme: "https".into(),
                        query: "c=d".into(),
                        fragment: "f".into(),
                        size: -1,
                        protocol: "HTTP/2".into(),
                        body: "{\"a\":1}".into(),
                        raw_body: vec![0, 0xff, 1],
                    }),
                }),
                context_extensions: map(&[("virtual_host", "vh"), ("a", "")]),
                metadata_context: Some(metadata(
                    "envoy.filters.http.jwt_authn",
                    "iss",
                    pbuf::value::Kind::StringValue("i".into()),
                )),
                route_metadata_context: Some(metadata(
                    "r",
                    "n",
                    pbuf::value::Kind::NumberValue(2.0),
                )),
                tls_session: Some(ac::TlsSession {
                    sni: "shop.example".into(),
                }),
            }),
        };
        let mut envoy_internal = full.clone();
        if let Some(a) = envoy_internal.attributes.as_mut() {
            a.source = Some(ac::Peer {
                address: Some(core::Address {
                    address: Some(core::address::Address::EnvoyInternalAddress(
                        core::EnvoyInternalAddress {
                            address_name_specifier: Some(
                                core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                                    "l".into(),
                                ),
                            ),
                            endpoint_id: "e".into(),
                        },
                    )),
                }),
                ..ac::Peer::default()
            });
            a.metadata_context = None;
        }
        let bare = auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                request: Some(ac::Request {
                    time: None,
                    http: Some(ac::HttpRequest {
                        path: "/".into(),
                        ..ac::HttpRequest::default()
                    }),
                }),
                ..auth::AttributeContext::default()
            }),
        };
        let empty_attributes = auth::CheckRequest {
            attributes: Some(auth::AttributeContext::default()),
        };
        vec![
            full,
            envoy_internal,
            bare,
            empty_attributes,
            auth::CheckRequest::default(),
        ]
    }

    /// The wire reading and prost's agree on `bytes`: both refuse them, or both read the same
    /// request. Returns whether they were read.
    fn agree(bytes: &[u8]) -> bool {
        let wire = authz_request(bytes);
        let prost = auth::CheckRequest::decode(bytes);
        match (wire, prost) {
            (Ok(w), Ok(p)) => {
                assert_eq!(w, via_prost(&p), "bytes {bytes:02x?}");
                true
            }
            (Err(_), Err(_)) => false,
            (w, p) => panic!(
                "the wire reading says {w:?}, prost says {:?}, of {bytes:02x?}",
                p.map(|_| "a message")
            ),
        }
    }

    #[test]
    fn reads_every_field_as_prost_and_the_old_copy_did() {
        for r in requests() {
            let bytes = r.encode_to_vec();
            assert!(agree(&bytes));
        }
        // And the reading is what the fields say, not only what the oracle says.
        let r = authz_request(&requests()[0].encode_to_vec()).unwrap();
        let http = r.http.as_ref().unwrap();
        assert_eq!(
            http.headers[0],
            (":authority".into(), "shop.example".into())
        );
        assert_eq!(http.headers.len(), 4);
        assert!(http.headers.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(http.raw_body, [0, 0xff, 1]);
        assert_eq!(http.header_map.as_ref().unwrap()[1].raw_value, b"2");
        assert_eq!(
            r.time,
            Some(Timestamp {
                seconds: 1_767_323_045,
                nanos: -7
            })
        );
        let source = r.source.as_ref().unwrap();
        assert_eq!(source.principal, "spiffe://cluster.local/ns/a/sa/b");
        assert_eq!(
            source.labels,
            [("app".into(), "web".into()), ("tier".into(), "1".into())]
        );
        assert_eq!(r.context_extensions[0], ("a".into(), String::new()));
    }

    /// Protobuf's rules for a field that appears twice: the encodings of two messages one
    /// after the other are their merge (the later scalar and string wins, messages merge, a
    /// map keeps the later value of a key), and unknown fields of every wire type are skipped.
    #[test]
    fn repeats_merges_and_unknown_fields_follow_prost() {
        let all = requests();
        let encoded: Vec<Vec<u8>> = all.iter().map(Message::encode_to_vec).collect();
        for a in &encoded {
            for b in &encoded {
                assert!(agree(&[a.as_slice(), b.as_slice()].concat()));
            }
        }
        // The same header twice with different values inside one message: the later one.
        use auth::attribute_context as ac;
        let with = |value: &str| auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                request: Some(ac::Request {
                    time: None,
                    http: Some(ac::HttpRequest {
                        headers: map(&[("x-role", value), ("b", value)]),
                        ..ac::HttpRequest::default()
                    }),
                }),
                ..auth::AttributeContext::default()
            }),
        };
        let twice = [with("user").encode_to_vec(), with("admin").encode_to_vec()].concat();
        assert!(agree(&twice));
        let headers = authz_request(&twice).unwrap().http.unwrap().headers;
        assert_eq!(
            headers,
            [
                ("b".into(), "admin".into()),
                ("x-role".into(), "admin".into())
            ]
        );
        // Unknown fields of each wire type, at the top and inside the HTTP request.
        let unknown: [&[u8]; 5] = [
            &[0xf8, 0x06, 0x96, 0x01],             // field 111, varint
            &[0xfd, 0x06, 1, 2, 3, 4],             // field 111, fixed32
            &[0xf9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8], // field 111, fixed64
            &[0xfa, 0x06, 2, b'h', b'i'],          // field 111, length-delimited
            &[0xfb, 0x06, 0x08, 0x01, 0xfc, 0x06], // field 111, a group holding a varint
        ];
        let http_only = with("user").encode_to_vec();
        for u in unknown {
            assert!(agree(&[u, http_only.as_slice()].concat()));
            assert!(agree(&[http_only.as_slice(), u].concat()));
        }
    }

    /// Wrong wire types, strings that are not UTF-8, truncations and every single-byte change
    /// of real encodings: the reading refuses exactly what prost refuses, and reads the rest
    /// as prost does.
    #[test]
    fn damaged_encodings_are_refused_or_read_as_prost_reads_them() {
        let mut read = 0;
        let mut refused = 0;
        for r in requests().iter().take(3) {
            let bytes = r.encode_to_vec();
            for cut in 0..bytes.len() {
                if agree(&bytes[..cut]) {
                    read += 1;
                } else {
                    refused += 1;
                }
            }
            for i in 0..bytes.len() {
                for v in [
                    0x00,
                    0x01,
                    0x07,
                    0x80,
                    0xc3,
                    0xff,
                    bytes[i] ^ 0x02,
                    bytes[i] ^ 0x05,
                ] {
                    let mut damaged = bytes.clone();
                    damaged[i] = v;
                    if agree(&damaged) {
                        read += 1;
                    } else {
                        refused += 1;
                    }
                }
            }
        }
        // Both kinds were exercised in numbers.
        assert!(
            read > 1000 && refused > 1000,
            "read {read}, refused {refused}"
        );
        // The named cases: a string field sent as a varint, and a path that is not UTF-8.
        let path_as_varint = [0x0a, 0x06, 0x22, 0x04, 0x12, 0x02, 0x20, 0x01];
        assert!(!agree(&path_as_varint));
        let latin1_path = [0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x22, 0x01, 0xe9];
        assert!(matches!(
            authz_request(&latin1_path),
            Err(WireError::NotUtf8)
        ));
        assert!(!agree(&latin1_path));
    }

    /// A peer's address is read directly when it is Envoy's usual one and by prost otherwise;
    /// both read it as prost does, on either side of the boundary, and repeated.
    #[test]
    fn socket_addresses_read_directly_or_by_prost_alike() {
        fn field(tag: u32, body: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            prost::encoding::encode_key(tag, WireType::LengthDelimited, &mut out);
            prost::encoding::encode_varint(body.len() as u64, &mut out);
            out.extend_from_slice(body);
            out
        }
        fn varint(tag: u32, v: u64) -> Vec<u8> {
            let mut out = Vec::new();
            prost::encoding::encode_key(tag, WireType::Varint, &mut out);
            prost::encoding::encode_varint(v, &mut out);
            out
        }
        // A CheckRequest whose source and destination have `address` (an `Address` message).
        let check = |address: &[u8]| {
            let peer = field(1, address);
            field(1, &[field(1, &peer), field(2, &peer)].concat())
        };
        let socket = |parts: &[Vec<u8>]| field(1, &parts.concat());
        let ip = field(2, b"10.0.0.1");
        let port = varint(3, 8080);
        let cases: Vec<Vec<u8>> = vec![
            socket(&[ip.clone(), port.clone()]),
            socket(&[port.clone(), ip.clone()]),
            socket(std::slice::from_ref(&ip)),
            socket(std::slice::from_ref(&port)),
            socket(&[]),
            Vec::new(),
            // What only prost reads: UDP, a named port, a resolver, IPv4-compat, a field twice,
            // a port past 32 bits (prost keeps its low bits), an address that is a pipe.
            socket(&[varint(1, 1), ip.clone(), port.clone()]),
            socket(&[ip.clone(), field(4, b"http")]),
            socket(&[ip.clone(), port.clone(), field(5, b"dns")]),
            socket(&[ip.clone(), port.clone(), varint(6, 1)]),
            socket(&[ip.clone(), field(2, b"10.0.0.2"), port.clone()]),
            socket(&[ip.clone(), port.clone(), varint(3, 9090)]),
            socket(&[ip.clone(), varint(3, (1 << 32) + 5)]),
            [
                socket(std::slice::from_ref(&ip)),
                socket(std::slice::from_ref(&port)),
            ]
            .concat(),
            field(2, &field(1, b"/run/envoy.sock")),
        ];
        for address in &cases {
            assert!(agree(&check(address)), "{address:02x?}");
            // Twice: the second occurrence merges into the first, whichever way each was read.
            for other in &cases {
                let peer = [field(1, address), field(1, other)].concat();
                assert!(
                    agree(&field(1, &field(1, &peer))),
                    "{address:02x?} {other:02x?}"
                );
            }
        }
        // The usual one is read as it was sent.
        let r = authz_request(&check(&cases[0])).unwrap();
        assert_eq!(
            r.source.and_then(|p| p.address),
            Some(Address::Socket(SocketAddress {
                address: "10.0.0.1".into(),
                port_value: 8080,
                ..SocketAddress::default()
            }))
        );
    }
}
