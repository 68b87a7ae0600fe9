//! `server.forwarding` and `server.trusted_proxies`: what happens to the forwarding headers a
//! request arrives with, and whose are believed. Values of the config; the proxy's header
//! policy applies them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `server.forwarding`: what happens to the forwarding headers a request arrives with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMode {
    /// From a peer in `server.trusted_proxies` they pass through untouched (`X-Forwarded-For`
    /// is set to the peer only when missing; `-Proto`/`-Host` only when absent); from any
    /// other peer they are dropped and set from the connection.
    #[default]
    Trusted,
    /// The peer is appended to `X-Forwarded-For` (all incoming lines are kept, joined into
    /// one list); everything else passes through, `-Proto`/`-Host` set when absent. For a
    /// backend that walks the list itself.
    Append,
    /// Incoming forwarding headers are always dropped and set from the connection.
    Replace,
}

/// The peers (`server.trusted_proxies`) whose forwarding headers are believed in
/// [`ForwardingMode::Trusted`]; parsed once when the config is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// Loopback and the private ranges, like Rails' default trusted proxies: Dify's nginx reaches
/// dify-shaper over a docker network (Docker's default pools are in 172.16.0.0/12 and
/// 192.168.0.0/16; other private ranges when configured).
pub const DEFAULT_TRUSTED_PROXIES: [IpNet; 6] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
];

/// No trusted peer: what a request without a config snapshot falls back to.
pub static NO_TRUSTED_PROXIES: TrustedProxies = TrustedProxies(Vec::new());

impl TrustedProxies {
    /// These ranges.
    pub fn new(ranges: Vec<IpNet>) -> Self {
        TrustedProxies(ranges)
    }

    /// Loopback and the private ranges ([`DEFAULT_TRUSTED_PROXIES`]).
    pub fn defaults() -> Self {
        TrustedProxies(DEFAULT_TRUSTED_PROXIES.to_vec())
    }

    /// Parses one entry: CIDR notation (`"10.0.0.0/8"`) or a single address (`"192.0.2.10"`,
    /// taken as `/32` or `/128`). Host bits below the prefix are cleared.
    pub fn parse_range(text: &str) -> std::result::Result<IpNet, String> {
        text.parse::<IpNet>()
            .map(|net| net.trunc())
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                format!(
                    "{text:?} is not an address range: expected CIDR notation like \"10.0.0.0/8\" \
                     or a single address like \"192.0.2.10\""
                )
            })
    }

    /// The ranges, in configured order.
    pub fn ranges(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether `ip` is in one of the ranges. An IPv4 peer seen on a dual-stack listener as
    /// `::ffff:a.b.c.d` matches the IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}
