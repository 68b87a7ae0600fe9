//! Per-request work the proxy adds before any I/O: route lookup over the shipped config, and
//! the request-id / forwarding header policy.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dify_shaper::config::forwarding::{ForwardingMode, TrustedProxies};
use dify_shaper::config::{parse_str, Overrides};
use dify_shaper::proxy::headers::{apply_forwarding, request_id_from};
use pingora::http::RequestHeader;

fn routing(c: &mut Criterion) {
    let text = include_str!("../conf/dify-shaper.toml");
    let config =
        parse_str(text, "conf/dify-shaper.toml", &Overrides::default()).expect("shipped config is valid");
    let post = http::Method::POST;
    let get = http::Method::GET;
    c.bench_function("route /v1/workflows/run (shipped config)", |b| {
        b.iter(|| config.router.route(black_box(&post), black_box("/v1/workflows/run")))
    });
    c.bench_function("route /v1/chat-messages/{id}/stop", |b| {
        b.iter(|| config.router.route(black_box(&post), black_box("/v1/chat-messages/5f1c/stop")))
    });
    c.bench_function("route / catch-all (worst case)", |b| {
        b.iter(|| config.router.route(black_box(&get), black_box("/apps/123/workflow")))
    });
}

fn headers(c: &mut Criterion) {
    let mut template = RequestHeader::build("POST", b"/v1/workflows/run", None).expect("request");
    template.insert_header("host", "dify.example").expect("header");
    template.insert_header("x-forwarded-for", "10.0.0.1").expect("header");
    let ip = Some("127.0.0.1".parse().expect("ip"));
    let trusted = TrustedProxies::defaults();
    c.bench_function("request id + X-Forwarded-*", |b| {
        b.iter(|| {
            let mut req = template.clone();
            let id = request_id_from(&req);
            apply_forwarding(&mut req, &id, ForwardingMode::Trusted, &trusted, ip).expect("headers");
            req
        })
    });
}

criterion_group!(benches, routing, headers);
criterion_main!(benches);
