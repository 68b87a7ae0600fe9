//! Forwarding modes × trusted and untrusted peers, and the request id.

use super::*;

/// Dify's nginx on the default compose network: inside the default trusted ranges.
const PROXY: &str = "172.18.0.5";
/// A client reaching dify-shaper directly from the internet.
const OUTSIDER: &str = "198.51.100.9";

/// No `X-Forwarded-For`, one line, and two lines.
const XFF_CASES: [&[&str]; 3] = [&[], &["203.0.113.7"], &["203.0.113.7", "192.0.2.1"]];

/// What a client sends to pose as another address, scheme or host.
const SPOOFED: [(&str, &str); 6] = [
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-port", "443"),
    ("x-real-ip", "192.0.2.66"),
    ("cf-connecting-ip", "192.0.2.67"),
    ("forwarded", "for=192.0.2.68;proto=https"),
];

fn request(headers: &[(&'static str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/v1/info", None).expect("request");
    for (k, v) in headers {
        req.append_header(*k, *v).expect("header");
    }
    req
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// A request from `peer` with `Host: dify.example`, the given XFF lines and, when `spoofed`,
/// every header of [`SPOOFED`], after `apply_forwarding` with the default trusted ranges.
fn forward(mode: ForwardingMode, peer: &str, xff: &[&str], spoofed: bool) -> RequestHeader {
    let mut req = request(&[("host", "dify.example")]);
    for line in xff {
        req.append_header("x-forwarded-for", *line).expect("xff");
    }
    if spoofed {
        for (k, v) in SPOOFED {
            req.append_header(k, v).expect("header");
        }
    }
    apply_forwarding(&mut req, "rid", mode, &TrustedProxies::defaults(), Some(ip(peer))).expect("apply");
    req
}

/// Every line of header `name`, in order.
fn lines(req: &RequestHeader, name: &str) -> Vec<String> {
    req.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

/// The headers say only what the connection from `peer` shows.
fn assert_from_connection(req: &RequestHeader, peer: &str, case: &str) {
    assert_eq!(lines(req, "x-forwarded-for"), [peer], "{case}");
    assert_eq!(lines(req, "x-forwarded-proto"), ["http"], "{case}");
    assert_eq!(lines(req, "x-forwarded-host"), ["dify.example"], "{case}");
    for name in ["x-forwarded-port", "x-real-ip", "cf-connecting-ip", "forwarded"] {
        assert!(lines(req, name).is_empty(), "{case}: {name} must be dropped");
    }
}

/// Everything but `X-Forwarded-For` arrived as sent (Proto/Host filled in when absent).
fn assert_others_passed_through(req: &RequestHeader, spoofed: bool, case: &str) {
    if spoofed {
        for (name, value) in SPOOFED {
            assert_eq!(lines(req, name), [value], "{case}: {name}");
        }
    } else {
        assert_eq!(lines(req, "x-forwarded-proto"), ["http"], "{case}");
        assert_eq!(lines(req, "x-forwarded-host"), ["dify.example"], "{case}");
    }
}

#[test]
fn request_id_is_kept_when_sane_and_generated_otherwise() {
    assert_eq!(request_id_from(&request(&[("x-request-id", "abc-123")])), "abc-123");
    let generated = request_id_from(&request(&[("x-request-id", "has space")]));
    assert_eq!(generated.len(), 32);
    assert_ne!(request_id_from(&request(&[])), request_id_from(&request(&[])));
    let id = uuid::Uuid::parse_str(&generated).expect("a uuid");
    assert_eq!(id.get_version(), Some(uuid::Version::Random));
    let req = forward(ForwardingMode::Trusted, PROXY, &[], false);
    assert_eq!(lines(&req, "x-request-id"), ["rid"]);
    assert_eq!(lines(&req, "host"), ["dify.example"], "Host is never rewritten");
}

#[test]
fn the_request_id_value_is_the_request_id() {
    for req in [request(&[("x-request-id", "abc-123")]), request(&[("x-request-id", "")]), request(&[])] {
        let (text, value) = request_id_and_value(&req);
        assert_eq!(value.expect("a header value").to_str().expect("ascii"), text);
    }
    let mut upstream = request(&[("host", "dify.example")]);
    let (_, value) = request_id_and_value(&upstream);
    let value = value.expect("a header value");
    apply_forwarding(
        &mut upstream,
        value.clone(),
        ForwardingMode::Trusted,
        &TrustedProxies::defaults(),
        None,
    )
    .expect("apply");
    assert_eq!(upstream.headers.get("x-request-id"), Some(&value));
}

#[test]
fn trusted_mode_passes_a_trusted_proxys_headers_through() {
    for spoofed in [false, true] {
        for xff in XFF_CASES {
            let case = format!("xff={xff:?} spoofed={spoofed}");
            let req = forward(ForwardingMode::Trusted, PROXY, xff, spoofed);
            // The first line stays exactly what nginx wrote: that is the IP Dify stores.
            let expected: Vec<&str> = if xff.is_empty() { vec![PROXY] } else { xff.to_vec() };
            assert_eq!(lines(&req, "x-forwarded-for"), expected, "{case}");
            assert_others_passed_through(&req, spoofed, &case);
        }
    }
}

#[test]
fn trusted_mode_replaces_an_untrusted_peers_headers() {
    for spoofed in [false, true] {
        for xff in XFF_CASES {
            let case = format!("xff={xff:?} spoofed={spoofed}");
            let req = forward(ForwardingMode::Trusted, OUTSIDER, xff, spoofed);
            assert_from_connection(&req, OUTSIDER, &case);
        }
    }
}

#[test]
fn append_mode_adds_the_peer_and_keeps_every_line() {
    for peer in [PROXY, OUTSIDER] {
        for spoofed in [false, true] {
            let expected =
                [peer.to_string(), format!("203.0.113.7, {peer}"), format!("203.0.113.7, 192.0.2.1, {peer}")];
            for (xff, expected) in XFF_CASES.into_iter().zip(expected) {
                let case = format!("peer={peer} xff={xff:?} spoofed={spoofed}");
                let req = forward(ForwardingMode::Append, peer, xff, spoofed);
                assert_eq!(lines(&req, "x-forwarded-for"), [expected], "{case}");
                assert_others_passed_through(&req, spoofed, &case);
            }
        }
    }
}

#[test]
fn replace_mode_ignores_what_any_peer_sent() {
    for peer in [PROXY, OUTSIDER] {
        for spoofed in [false, true] {
            for xff in XFF_CASES {
                let case = format!("peer={peer} xff={xff:?} spoofed={spoofed}");
                let req = forward(ForwardingMode::Replace, peer, xff, spoofed);
                assert_from_connection(&req, peer, &case);
            }
        }
    }
}

#[test]
fn blank_forwarded_for_from_a_trusted_proxy_is_filled_in() {
    let req = forward(ForwardingMode::Trusted, PROXY, &[" "], false);
    assert_eq!(lines(&req, "x-forwarded-for"), [PROXY]);
    let req = forward(ForwardingMode::Append, PROXY, &["", "203.0.113.7 "], false);
    assert_eq!(lines(&req, "x-forwarded-for"), [format!("203.0.113.7, {PROXY}")]);
}

#[test]
fn ipv4_mapped_peers_are_matched_and_written_as_ipv4() {
    let req = forward(ForwardingMode::Trusted, "::ffff:172.18.0.5", &["203.0.113.7"], false);
    assert_eq!(lines(&req, "x-forwarded-for"), ["203.0.113.7"]);
    let req = forward(ForwardingMode::Trusted, "::ffff:198.51.100.9", &["203.0.113.7"], false);
    assert_eq!(lines(&req, "x-forwarded-for"), [OUTSIDER]);
}

#[test]
fn an_unknown_peer_is_not_trusted() {
    let mut req =
        request(&[("host", "dify.example"), ("x-forwarded-for", "203.0.113.7"), ("x-real-ip", "1.2.3.4")]);
    apply_forwarding(&mut req, "rid", ForwardingMode::Trusted, &TrustedProxies::defaults(), None)
        .expect("apply");
    assert!(lines(&req, "x-forwarded-for").is_empty());
    assert!(lines(&req, "x-real-ip").is_empty());
    assert_eq!(lines(&req, "x-forwarded-proto"), ["http"]);
}

#[test]
fn an_empty_trusted_list_trusts_no_one() {
    let mut req = request(&[("host", "dify.example"), ("x-forwarded-for", "203.0.113.7")]);
    let nobody = TrustedProxies::new(Vec::new());
    apply_forwarding(&mut req, "rid", ForwardingMode::Trusted, &nobody, Some(ip("127.0.0.1")))
        .expect("apply");
    assert_eq!(lines(&req, "x-forwarded-for"), ["127.0.0.1"]);
}

#[test]
fn a_forwarded_for_line_that_is_not_utf8_survives_append() {
    let mut req = request(&[]);
    req.append_header("x-forwarded-for", HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"))
        .expect("header");
    apply_forwarding(&mut req, "rid", ForwardingMode::Append, &TrustedProxies::defaults(), Some(ip(PROXY)))
        .expect("apply");
    let value = req.headers.get("x-forwarded-for").map(|v| v.as_bytes().to_vec());
    assert_eq!(value.as_deref(), Some(&b"caf\xe9, 172.18.0.5"[..]));
}

#[test]
fn default_trusted_proxies_are_loopback_and_private_ranges() {
    let defaults = TrustedProxies::defaults();
    for inside in ["127.0.0.1", "::1", "10.1.2.3", "172.31.255.255", "192.168.1.1", "fd00::1"] {
        assert!(defaults.contains(ip(inside)), "{inside}");
    }
    for outside in ["172.32.0.1", "8.8.8.8", "100.64.0.1", "2001:db8::1", "fe80::1", "::"] {
        assert!(!defaults.contains(ip(outside)), "{outside}");
    }
    let printed = serde_json::to_value(&defaults).expect("serialise");
    assert_eq!(
        printed,
        serde_json::json!([
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7"
        ])
    );
}

#[test]
fn trusted_proxy_entries_parse_as_cidr_or_single_address() {
    let parse = |t: &str| TrustedProxies::parse_range(t).map(|n| n.to_string());
    assert_eq!(parse("10.0.0.0/8"), Ok("10.0.0.0/8".into()));
    assert_eq!(parse("10.1.2.3/8"), Ok("10.0.0.0/8".into()), "host bits are cleared");
    assert_eq!(parse("192.0.2.10"), Ok("192.0.2.10/32".into()));
    assert_eq!(parse("2001:db8::/32"), Ok("2001:db8::/32".into()));
    assert_eq!(parse("::1"), Ok("::1/128".into()));
    for bad in ["10.0.0.0/33", "10.0.0/8", "proxy.internal", "", " 10.0.0.0/8"] {
        let e = parse(bad).expect_err(bad);
        assert!(e.contains("is not an address range") && e.contains("10.0.0.0/8"), "{e}");
    }
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    for text in [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.0.1",
        "172.18.0.5",
        "1.22.133.4",
        "100.9.90.199",
        "::1",
        "2001:db8::7",
    ] {
        let value = ip_value(ip(text)).expect("value");
        assert_eq!(value.to_str().expect("ascii"), ip(text).to_string(), "{text}");
    }
}

#[test]
fn forwarded_client_follows_difys_order() {
    let with = |pairs: &[(&str, &str)]| {
        let mut h = RequestHeader::build("GET", b"/", None).expect("header");
        for (k, v) in pairs {
            h.append_header(k.to_string(), *v).expect("append");
        }
        forwarded_client(&h)
    };
    let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
    assert_eq!(with(&[("x-forwarded-for", "203.0.113.7, 10.0.0.1")]), ip("203.0.113.7"));
    assert_eq!(
        with(&[("x-forwarded-for", "203.0.113.7"), ("cf-connecting-ip", "198.51.100.2")]),
        ip("198.51.100.2")
    );
    assert_eq!(with(&[("x-real-ip", "::ffff:192.0.2.9")]), ip("192.0.2.9"));
    assert_eq!(with(&[("x-forwarded-for", "unknown")]), None);
    assert_eq!(with(&[]), None);
}
