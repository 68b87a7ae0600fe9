//! Watching the backend during a maintenance cycle: the health gate that ends `Recovering`
//! (the health path answering 2xx `successes` times in a row on every endpoint restarted,
//! then optionally one request through a real route below 500), and, for the `none` action,
//! noticing the external restart (an endpoint refusing connections or answering 5xx).
//!
//! Both are plain futures the controller spawns and aborts when the phase moves on; their
//! deadlines belong to the state machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::handle::UpstreamHandle;
use crate::config::maintenance::{parse_gate_request, GateSpec};
use crate::resilience::probe::{ask, Answer};

/// How often the `none` watch looks for the external restart.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Resolves once every endpoint in scope passed the gate; returns the addresses that
/// passed. Endpoints that change meanwhile (a recreated container's new IP) start over.
pub async fn passed<G: UpstreamHandle>(
    group: Arc<G>,
    server: Option<String>,
    gate: GateSpec,
) -> Vec<SocketAddr> {
    let mut good: HashMap<SocketAddr, u32> = HashMap::new();
    let request = gate.request.as_deref().and_then(parse_gate_request);
    loop {
        let endpoints = group.endpoints_of(server.as_deref());
        good.retain(|a, _| endpoints.iter().any(|e| e.addr == *a));
        let probes = endpoints.iter().map(|e| {
            let (addr, host, path) = (e.addr, e.server.clone(), gate.path.clone());
            async move { (addr, ask(addr, &host, "GET", &path, gate.timeout.0).await) }
        });
        for (addr, answer) in futures_util::future::join_all(probes).await {
            let count = good.entry(addr).or_default();
            *count = if matches!(answer, Answer::Status(200..=299)) { *count + 1 } else { 0 };
        }
        let all_good =
            !endpoints.is_empty() && endpoints.iter().all(|e| good.get(&e.addr) >= Some(&gate.successes));
        if all_good {
            match (&request, endpoints.first()) {
                (Some((method, path)), Some(first)) => {
                    match ask(first.addr, &first.server, method, path, gate.timeout.0).await {
                        Answer::Status(status) if status < 500 => {
                            return endpoints.iter().map(|e| e.addr).collect()
                        }
                        answer => {
                            tracing::info!(upstream = group.name(), ?answer, %method, %path, "health gate: the route probe failed; probing again");
                            good.clear();
                        }
                    }
                }
                _ => return endpoints.iter().map(|e| e.addr).collect(),
            }
        }
        tokio::time::sleep(gate.interval.0).await;
    }
}

/// Resolves when any endpoint in scope refuses connections or answers 5xx on the gate's
/// path: the external restart has begun.
pub async fn went_down<G: UpstreamHandle>(group: Arc<G>, server: Option<String>, gate: GateSpec) {
    loop {
        let endpoints = group.endpoints_of(server.as_deref());
        let probes = endpoints.iter().map(|e| ask(e.addr, &e.server, "GET", &gate.path, gate.timeout.0));
        let answers = futures_util::future::join_all(probes).await;
        if answers.iter().any(|a| matches!(a, Answer::Refused | Answer::Status(500..))) {
            return;
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}
