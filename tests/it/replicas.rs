//! A group of replicas — a dead one is taken out of rotation without a
//! single failed request, and load goes to the least-loaded replica.

use crate::common;

use std::time::Duration;

use common::*;
use dify_shaper_tools::sim::{ServiceTime, SimConfig, Simulator};

const RUN: &str = r#"{"inputs":{},"response_mode":"blocking","user":"u"}"#;

async fn replica(service_ms: u64) -> Simulator {
    let config = SimConfig {
        worker_connections: 16,
        service_time: ServiceTime::Fixed(Duration::from_millis(service_ms)),
        ..SimConfig::default()
    };
    Simulator::start("127.0.0.1:0".parse().expect("addr"), config).await.expect("sim")
}

fn config(a: &Simulator, b: &Simulator) -> String {
    format!(
        "[upstreams.api]\nservers = [\"{}\", \"{}\"]\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclass = \"run\"\n",
        a.addr(),
        b.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_costs_no_request() {
    let _machine = crate::common::shared().await;
    let (a, b) = (replica(50).await, replica(50).await);
    let proxy = ProxyProcess::start(&config(&a, &b)).await;
    a.stop().await;
    for i in 0..20 {
        let id = format!("r-{i}");
        let (code, _, body) =
            post_json(proxy.addr, "/v1/workflows/run", RUN, &[("x-request-id", id.as_str())]).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(b.count_for_request_id(&id), 1);
    }
    let (_, _, body) = get(proxy.admin, "/status").await;
    let health = json(&body)["upstreams"]["api"]["health"].clone();
    let dead = a.addr().to_string();
    assert!(
        health.as_array().is_some_and(|h| h.iter().any(|e| e["addr"] == dead.as_str() && e["down"] == true)),
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_goes_to_the_least_loaded_replica() {
    let _machine = crate::common::shared().await;
    // Replica a is ten times slower: with least-loaded picking, it holds its few requests
    // while the fast replica serves most of them.
    let (slow, fast) = (replica(1000).await, replica(100).await);
    let proxy = ProxyProcess::start(&config(&slow, &fast)).await;
    let mut runs = Vec::new();
    for i in 0..20 {
        let addr = proxy.addr;
        runs.push(tokio::spawn(async move {
            let id = format!("l-{i}");
            post_json(addr, "/v1/workflows/run", RUN, &[("x-request-id", id.as_str())]).await.0
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for run in runs {
        assert_eq!(run.await.expect("join"), 200);
    }
    let to_slow = (0..20).filter(|i| slow.count_for_request_id(&format!("l-{i}")) == 1).count();
    assert!(to_slow <= 6, "{to_slow} of 20 went to the slow replica");
}
