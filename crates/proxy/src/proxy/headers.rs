//! Header policy on the way to the upstream: the request id (taken from the client when sane,
//! generated otherwise) and the forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
//! `CF-Connecting-IP`).
//!
//! Dify 1.x takes the client IP from `CF-Connecting-IP`, else from the *first
//! `X-Forwarded-For` line as a whole*, else from the socket peer. Behind Dify's own nginx that
//! line already names the client (`$proxy_add_x_forwarded_for`); appending our hop to it would
//! make Dify store `"203.0.113.7, 172.18.0.5"` as the client IP. So by default
//! ([`ForwardingMode::Trusted`], `server.forwarding`) the headers of a trusted proxy pass through untouched, and
//! those of anyone else are replaced by what this connection shows, so a client that reaches
//! us directly cannot choose the IP Dify records (rate limits, audit logs, end-user records).

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

use super::envelope::REQUEST_ID;
use crate::config::forwarding::{ForwardingMode, TrustedProxies};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
// The same names ready-made for lookups, which with a `&str` parse the name every time.
// (Inserts still take the `&str`: pingora parses what it is given, either way.)
static X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
static X_FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO);
static X_FORWARDED_HOST_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_HOST);
static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);

/// Every header through which a client could claim another address, scheme or host. Port and
/// prefix are in the list because Werkzeug's `ProxyFix`, which a Flask app such as Dify's API
/// can be wrapped in, reads them alongside the others; `CF-Connecting-IP` because Dify
/// prefers it over `X-Forwarded-For`.
const FORWARDING_HEADERS: [&str; 8] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "forwarded",
    "x-real-ip",
    "cf-connecting-ip",
];

/// The client's request id if it is 1–128 visible ASCII characters, else a fresh UUID.
pub fn request_id_from(header: &RequestHeader) -> String {
    request_id_and_value(header).0
}

/// The request id of [`request_id_from`], and the same as a header value to send upstream
/// and back (`None` only if it could not be one, which a UUID always can): made once, it is
/// copied by reference count rather than parsed and copied for every header it goes into.
pub fn request_id_and_value(header: &RequestHeader) -> (String, Option<HeaderValue>) {
    let sent = header.headers.get(&REQUEST_ID_NAME).filter(|v| {
        let bytes = v.as_bytes();
        !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic)
    });
    // Visible ASCII is always a `str`.
    match sent.and_then(|v| Some((v.to_str().ok()?, v))) {
        Some((text, value)) => (text.to_string(), Some(value.clone())),
        None => {
            let (text, id) = new_request_id();
            // Owned by its `Bytes` (one allocation): clones only count references, where a
            // copied value's first clone allocates once more to become shareable.
            (text, HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id)).ok())
        }
    }
}

/// A random (v4) UUID in simple form. The bytes come from `rand`'s thread-local generator
/// (a CSPRNG seeded from the OS): `Uuid::new_v4` asks the OS for every id, a `getrandom`
/// system call on every request that brings no id of its own. Encoded straight into a
/// buffer: `to_string` would run it through the formatting machinery.
/// Returned as text and as the bytes it was encoded into.
fn new_request_id() -> (String, [u8; uuid::fmt::Simple::LENGTH]) {
    let mut bytes = [0u8; uuid::fmt::Simple::LENGTH];
    let text = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .simple()
        .encode_lower(&mut bytes)
        .to_owned();
    (text, bytes)
}

/// Adds `X-Request-Id` (text, or a ready [`HeaderValue`]) and sets the forwarding headers of
/// the upstream request according to `mode`; `peer` is the socket peer's address (`None` when
/// unknown: then nothing the client sent is trusted and no `X-Forwarded-For` is added).
pub fn apply_forwarding(
    upstream: &mut RequestHeader,
    request_id: impl TryInto<HeaderValue>,
    mode: ForwardingMode,
    trusted: &TrustedProxies,
    peer: Option<IpAddr>,
) -> Result<()> {
    upstream.insert_header(REQUEST_ID, request_id)?;
    // `::ffff:a.b.c.d` from a dual-stack listener is the IPv4 client; Dify should see it so.
    let peer = peer.map(|ip| ip.to_canonical());
    match (mode, peer) {
        (ForwardingMode::Trusted, Some(ip)) if trusted.contains(ip) => keep_from_trusted(upstream, ip),
        (ForwardingMode::Append, _) => append_hop(upstream, peer),
        (ForwardingMode::Trusted | ForwardingMode::Replace, _) => set_from_connection(upstream, peer),
    }
}

/// The client a trusted proxy forwards for, as Dify would name it: `CF-Connecting-IP`, else
/// the first entry of the first `X-Forwarded-For` line, else `X-Real-IP`. `None` when none
/// holds an IP address.
pub fn forwarded_client(header: &RequestHeader) -> Option<IpAddr> {
    let parse = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.trim().parse::<IpAddr>().ok();
    let first_hop = |v: &HeaderValue| parse(v.as_bytes().split(|b| *b == b',').next().unwrap_or_default());
    let headers = &header.headers;
    headers
        .get("cf-connecting-ip")
        .and_then(|v| parse(v.as_bytes()))
        .or_else(|| headers.get(&X_FORWARDED_FOR_NAME).and_then(first_hop))
        .or_else(|| headers.get("x-real-ip").and_then(|v| parse(v.as_bytes())))
        .map(|ip| ip.to_canonical())
}

/// A trusted proxy's headers describe the original client: only fill in what it left out.
fn keep_from_trusted(upstream: &mut RequestHeader, peer: IpAddr) -> Result<()> {
    let has_forwarded_for =
        upstream.headers.get_all(&X_FORWARDED_FOR_NAME).iter().any(|v| !v.as_bytes().trim_ascii().is_empty());
    if !has_forwarded_for {
        upstream.insert_header(X_FORWARDED_FOR, ip_value(peer)?)?;
    }
    set_proto_and_host_if_absent(upstream)
}

/// Classic proxy chaining: the peer becomes the last entry of `X-Forwarded-For`. Several
/// incoming lines are one list (RFC 9110 §5.3), joined in order as nginx does, so none is lost.
fn append_hop(upstream: &mut RequestHeader, peer: Option<IpAddr>) -> Result<()> {
    if let Some(ip) = peer {
        let mut list = forwarded_for_entries(upstream).join(b", ".as_slice());
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(ip_value(ip)?.as_bytes());
        upstream.insert_header(X_FORWARDED_FOR, header_value(&list)?)?;
    }
    set_proto_and_host_if_absent(upstream)
}

/// Nothing the client sent about its origin is kept; the headers say what this connection
/// shows. dify-shaper listens on plain HTTP, hence `http`.
fn set_from_connection(upstream: &mut RequestHeader, peer: Option<IpAddr>) -> Result<()> {
    for name in FORWARDING_HEADERS {
        upstream.remove_header(name);
    }
    if let Some(ip) = peer {
        upstream.insert_header(X_FORWARDED_FOR, ip_value(ip)?)?;
    }
    set_proto_and_host_if_absent(upstream)
}

/// `X-Forwarded-Proto` and `X-Forwarded-Host` only when absent: when present they come from a
/// proxy in front (or survived only because the mode keeps them) and describe the client.
fn set_proto_and_host_if_absent(upstream: &mut RequestHeader) -> Result<()> {
    if !upstream.headers.contains_key(&X_FORWARDED_PROTO_NAME) {
        upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static("http"))?;
    }
    if !upstream.headers.contains_key(&X_FORWARDED_HOST_NAME) {
        if let Some(host) = upstream.headers.get(http::header::HOST).cloned() {
            upstream.insert_header(X_FORWARDED_HOST, host)?;
        }
    }
    Ok(())
}

/// The non-blank `X-Forwarded-For` lines, trimmed, in order (raw bytes: a value that is not
/// UTF-8 is still carried along rather than dropped).
fn forwarded_for_entries(upstream: &RequestHeader) -> Vec<Vec<u8>> {
    upstream
        .headers
        .get_all(&X_FORWARDED_FOR_NAME)
        .iter()
        .map(|v| v.as_bytes().trim_ascii().to_vec())
        .filter(|v| !v.is_empty())
        .collect()
}

/// `ip` as a header value, exactly as `Display` writes it. An IPv4 address (every peer on
/// Dify's compose network) is written by hand: `to_string` runs the formatting machinery for
/// each of its four numbers, on every request.
fn ip_value(ip: IpAddr) -> Result<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return header_value(ip.to_string().as_bytes());
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            text[len] = b'0' + d;
            len += 1;
        }
    }
    header_value(&text[..len])
}

fn header_value(bytes: &[u8]) -> Result<HeaderValue> {
    HeaderValue::from_bytes(bytes)
        .or_else(|e| Error::e_explain(ErrorType::InvalidHTTPHeader, format!("x-forwarded-for: {e}")))
}

#[cfg(test)]
mod tests;
