//! Assembling and running the pingora server: the proxy service on the client listeners, the
//! admin listener (a background service of ours that answers through the shutdown drain, see
//! [`crate::admin::listener`]), and background services (DNS refresh, health probes,
//! maintenance, SIGHUP reload, shutdown drain), with pingora's process settings derived from
//! our config.

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::listener::AdminListener;
use crate::admin::AdminApp;
use crate::app::App;
use crate::cluster::cycle::CycleSync;
use crate::cluster::heartbeat::Heartbeat;
use crate::config::Config;
use crate::downstream::gate::Gate;
use crate::downstream::header_limits::HeaderLimits;
use crate::housekeeping::Housekeeping;
use crate::lifecycle::PhaseWatcher;
use crate::maintenance::service::MaintenanceService;
use crate::proxy::DifyProxy;
use crate::reload::sighup::SighupReloader;
use crate::resilience::prober::Prober;
use crate::shutdown::drain::Drainer;
use crate::sidecar::Sidecar;
use crate::upstream::resolver::{resolve_all_blocking, Resolver};

/// pingora's process settings from our config.
fn server_conf(config: &Config) -> ServerConf {
    // On SIGTERM pingora sleeps `grace_period_seconds` unconditionally (default 300 s), then
    // cancels every task still running, waiting `graceful_shutdown_timeout_seconds` for its
    // runtimes. Our drainer (`crate::shutdown`) exits as soon as nothing is in progress, or
    // at `shutdown_grace`; pingora's grace is a backstop one second later, and its runtime
    // timeout only bounds the final teardown.
    let grace = config.server.shutdown_grace.0.as_secs_f64().ceil() as u64;
    ServerConf {
        threads: config.server.threads,
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool,
        grace_period_seconds: Some(grace + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        // Retries are decided by our hooks; this only caps them.
        max_retries: 8,
        // One single-threaded event loop per worker thread, each connection on one of them
        // (HAProxy's, nginx's and Envoy's model), instead of tokio's work-stealing scheduler.
        // A proxied request is a few short polls; stealing buys nothing for it and costs
        // cross-thread wake-ups and atomics on every one. Measured against a fast backend
        // (`benches/overhead.sh`, 1 thread): ~31 µs of CPU per request instead of ~36.
        work_stealing: false,
        ..ServerConf::default()
    }
}

/// File descriptors the process needs besides client connections: upstream connections
/// (pooled and in use), the admin listener's, logs, the config.
const FDS_BESIDES_CLIENTS: u64 = 1024;

/// Raises the soft open-file limit so `max_connections` client connections fit (as HAProxy
/// does from `maxconn`); warns when the hard limit does not allow it, since connections
/// beyond it would then fail at accept instead of getting a 503.
fn raise_open_file_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = max_connections as u64 + FDS_BESIDES_CLIENTS;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let target = wanted.min(hard);
    if soft < target {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            tracing::warn!("could not raise the open-file limit from {soft} to {target}: {e}");
        }
    }
    if target < wanted {
        tracing::warn!(
            "server.max_connections = {max_connections} needs an open-file limit of {wanted}, the hard \
             limit is {hard}: connections beyond about {} fail at accept (raise `ulimit -n` or \
             compose `ulimits: nofile`)",
            hard.saturating_sub(FDS_BESIDES_CLIENTS)
        );
    }
}

/// One line per `[[maintenance]]` entry for the start-up banner: schedule, next occurrence,
/// action.
fn maintenance_banner(config: &Config) -> Vec<String> {
    let now = chrono::Utc::now();
    config
        .maintenance
        .values()
        .map(|m| {
            let schedule = m.schedule.as_ref().map_or_else(|| "no schedule".to_string(), ToString::to_string);
            let next = m
                .schedule
                .as_ref()
                .and_then(|s| s.next_after(now))
                .map_or_else(|| "-".into(), |t| t.to_rfc3339());
            let action = m.action.as_ref().map_or_else(|| "none".into(), |a| a.describe());
            format!("{}: {schedule}, next {next}, {:?} mode, action {action}", m.upstream, m.mode)
        })
        .collect()
}

/// Builds the server for `app` and runs it until a shutdown signal; never returns.
pub fn run(app: Arc<App>) -> ! {
    let config = app.config();
    // Bound first, so a taken admin address ends the start at once with a message naming it;
    // connections made before the service starts wait in the backlog.
    let admin = match AdminListener::bind(config.server.admin, AdminApp::new(Arc::clone(&app))) {
        Ok(admin) => admin,
        Err(e) => {
            eprintln!("dify-shaper: {e}");
            std::process::exit(1)
        }
    };
    resolve_all_blocking(&app);
    let opt = Opt::default();
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();

    raise_open_file_limit(config.server.max_connections);
    let mut proxy_app = http_proxy(&server.configuration, DifyProxy::new(Arc::clone(&app)));
    let mut options = HttpServerOptions::default();
    options.request_header_limits = Some(Arc::new(HeaderLimits::new(Arc::clone(&app))));
    proxy_app.server_options = Some(options);
    let mut proxy = Service::new("dify-shaper proxy".to_string(), Gate::new(proxy_app, Arc::clone(&app)));
    // pingora reads each client connection through a 64 KiB buffer by default; with thousands
    // of requests held in the admission queue that buffer is most of their cost.
    let buffers = L4BufferSettings::default().read(config.server.client_read_buffer.0 as usize);
    for addr in &config.server.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    server.add_service(proxy);

    server.add_service(background_service("admin listener", admin));

    server.add_service(background_service("upstream resolver", Resolver::new(Arc::clone(&app))));
    server.add_service(background_service("housekeeping", Housekeeping::new(Arc::clone(&app))));
    server.add_service(background_service("sidecar", Sidecar::new(Arc::clone(&app))));
    server.add_service(background_service("health probes", Prober::new(Arc::clone(&app))));
    server.add_service(background_service("maintenance", MaintenanceService::new(Arc::clone(&app))));
    server.add_service(background_service("sighup reload", SighupReloader::new(Arc::clone(&app))));
    server.add_service(background_service("shutdown drain", Drainer::new(Arc::clone(&app))));
    if let Some(cluster) = &app.cluster {
        server.add_service(background_service(
            "cluster heartbeat",
            Heartbeat::new(Arc::clone(&app), Arc::clone(cluster)),
        ));
        server.add_service(background_service(
            "cluster maintenance",
            CycleSync::new(Arc::clone(&app), Arc::clone(&cluster.group)),
        ));
    }
    server.add_service(background_service(
        "readiness",
        PhaseWatcher::new(app.lifecycle.clone(), app.restart_only().listen().to_vec()),
    ));

    tracing::info!(
        listen = ?config.server.listen,
        admin = %config.server.admin,
        config = %config.source,
        threads = config.server.threads,
        upstreams = ?config.upstreams.iter().map(|(n, u)| format!("{n}={}", u.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))).collect::<Vec<_>>(),
        maintenance = ?maintenance_banner(&config),
        "dify-shaper starting"
    );
    server.run_forever()
}
