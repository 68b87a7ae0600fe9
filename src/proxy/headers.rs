//! Header policy on the way to the upstream: the request id (taken from the client when sane,
//! generated otherwise) and the `X-Forwarded-*` family.
//!
//! `X-Forwarded-For` is appended to (each hop adds the address it saw); `X-Forwarded-Proto`
//! and `X-Forwarded-Host` are set only when absent, because when dify-shaper sits behind
//! Dify's nginx those already describe the original client and must not be overwritten.

use std::net::IpAddr;

use pingora::http::RequestHeader;
use pingora::Result;

use super::envelope::REQUEST_ID;

/// The client's request id if it is 1–128 visible ASCII characters, else a fresh UUID.
pub fn request_id_from(header: &RequestHeader) -> String {
    header
        .headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_string)
}

/// A random (v4) UUID in simple form. The bytes come from `rand`'s thread-local generator
/// (a CSPRNG seeded from the OS): `Uuid::new_v4` asks the OS for every id, a `getrandom`
/// system call on every request that brings no id of its own.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid().simple().to_string()
}

/// Adds `X-Request-Id` and the `X-Forwarded-*` headers to the upstream request.
pub fn apply_forwarding(
    upstream: &mut RequestHeader,
    request_id: &str,
    client_ip: Option<IpAddr>,
) -> Result<()> {
    upstream.insert_header(REQUEST_ID, request_id)?;
    if let Some(ip) = client_ip {
        let forwarded_for = match upstream.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
            _ => ip.to_string(),
        };
        upstream.insert_header("x-forwarded-for", forwarded_for)?;
    }
    if !upstream.headers.contains_key("x-forwarded-proto") {
        upstream.insert_header("x-forwarded-proto", "http")?;
    }
    if !upstream.headers.contains_key("x-forwarded-host") {
        if let Some(host) = upstream.headers.get(http::header::HOST).cloned() {
            upstream.insert_header("x-forwarded-host", host)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/v1/info", None).expect("request");
        for (k, v) in headers {
            req.append_header(*k, *v).expect("header");
        }
        req
    }

    #[test]
    fn request_id_is_kept_when_sane_and_generated_otherwise() {
        assert_eq!(request_id_from(&request(&[("x-request-id", "abc-123")])), "abc-123");
        let generated = request_id_from(&request(&[("x-request-id", "has space")]));
        assert_eq!(generated.len(), 32);
        assert_ne!(request_id_from(&request(&[])), request_id_from(&request(&[])));
        let id = uuid::Uuid::parse_str(&generated).expect("a uuid");
        assert_eq!(id.get_version(), Some(uuid::Version::Random));
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_host_preserved() {
        let mut req = request(&[
            ("host", "dify.example"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        apply_forwarding(&mut req, "rid", Some("127.0.0.2".parse().expect("ip"))).expect("apply");
        let get = |k: &str| req.headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(get("x-forwarded-for").as_deref(), Some("10.0.0.1, 127.0.0.2"));
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(get("x-forwarded-host").as_deref(), Some("dify.example"));
        assert_eq!(get("x-request-id").as_deref(), Some("rid"));
        assert_eq!(get("host").as_deref(), Some("dify.example"));
    }
}
