//! A minimal fake Docker Engine API on a unix socket in a temp dir, for tests: `/version`,
//! `GET containers/json` (label filters), `POST containers/{name}/restart` and
//! `GET containers/{name}/stats`, each with or without the `/v1.xx` prefix. A container named
//! `P-S-N` carries Compose's labels for project `P` and service `S`, as Compose names them. Known containers restart with 204, unknown ones get Docker's 404;
//! a container named `hang` never answers. Stats: `cgv1` answers in cgroup v1 shape,
//! `stopped` with empty memory stats, every other known name in cgroup v2 shape.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// cgroup v2 stats: usage 500 MiB of which 100 MiB inactive page cache.
const STATS_V2: &str = r#"{"read":"2026-01-10T11:00:00.123456789Z","preread":"0001-01-01T00:00:00Z",
"pids_stats":{"current":42,"limit":18446744073709551615},
"blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"read","value":1048576}]},
"num_procs":0,"storage_stats":{},
"cpu_stats":{"cpu_usage":{"total_usage":123456789000,"usage_in_kernelmode":23456789000,"usage_in_usermode":100000000000},"system_cpu_usage":987654321000000,"online_cpus":2,"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},
"precpu_stats":{"cpu_usage":{"total_usage":0,"usage_in_kernelmode":0,"usage_in_usermode":0},"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},
"memory_stats":{"usage":524288000,"stats":{"active_anon":314572800,"active_file":52428800,"anon":367001600,"file":157286400,"inactive_anon":52428800,"inactive_file":104857600,"kernel_stack":1048576,"pgfault":123456,"pgmajfault":12,"shmem":0,"slab":8388608,"sock":0,"unevictable":0},"limit":8589934592},
"name":"/docker-api-1","id":"4f1a3b2c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
"networks":{"eth0":{"rx_bytes":1024,"rx_packets":10,"rx_errors":0,"rx_dropped":0,"tx_bytes":2048,"tx_packets":20,"tx_errors":0,"tx_dropped":0}}}"#;

/// cgroup v1 stats: usage 300 MiB of which 50 MiB inactive page cache (hierarchical).
const STATS_V1: &str = r#"{"read":"2026-01-10T11:00:00Z","preread":"0001-01-01T00:00:00Z",
"memory_stats":{"usage":314572800,"max_usage":419430400,"stats":{"active_anon":209715200,"cache":83886080,"inactive_file":10485760,"rss":230686720,"total_cache":83886080,"total_inactive_file":52428800,"total_rss":230686720},"failcnt":0,"limit":8589934592},
"name":"/cgv1","id":"aa"}"#;

/// A request as `METHOD /path?query`, the API version prefix removed.
type Log = Arc<Mutex<Vec<String>>>;

/// The running fake; stops when dropped.
pub(crate) struct FakeDocker {
    /// The socket to point clients at.
    pub(crate) socket: PathBuf,
    /// The same API on TCP, as a socket proxy serves it (`tcp://ADDR`).
    pub(crate) tcp: std::net::SocketAddr,
    log: Log,
    server: JoinHandle<()>,
    tcp_server: JoinHandle<()>,
    _dir: TempDir,
}

impl FakeDocker {
    /// Starts serving; `known` are the container names that exist.
    pub(crate) async fn start(known: &[&str]) -> FakeDocker {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind unix socket");
        let log: Log = Arc::default();
        let known: Arc<Vec<String>> = Arc::new(known.iter().map(|k| k.to_string()).collect());
        let serve = |record: Log, known: Arc<Vec<String>>| {
            service_fn(move |req: Request<Incoming>| {
                let (record, known) = (record.clone(), known.clone());
                async move { Ok::<_, Infallible>(answer(req, &record, &known).await) }
            })
        };
        let (record, names) = (log.clone(), known.clone());
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = serve(record.clone(), names.clone());
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let tcp = tcp_listener.local_addr().expect("tcp address");
        let record = log.clone();
        let tcp_server = tokio::spawn(async move {
            while let Ok((stream, _)) = tcp_listener.accept().await {
                let service = serve(record.clone(), known.clone());
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        FakeDocker { socket, tcp, log, server, tcp_server, _dir: dir }
    }

    /// Every request so far, in arrival order, without the API version prefix (bollard
    /// 0.21 sends none; a later one may).
    pub(crate) fn requests(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        self.server.abort();
        self.tcp_server.abort();
    }
}

async fn answer(req: Request<Incoming>, log: &Log, known: &[String]) -> Response<Full<Bytes>> {
    let mut parts: Vec<&str> = req.uri().path().trim_start_matches('/').split('/').collect();
    // `/v1.45/containers/…` and `/containers/…` are the same endpoint.
    let versioned =
        |p: &str| p.len() > 1 && p.starts_with('v') && p[1..].chars().all(|c| c.is_ascii_digit() || c == '.');
    if parts.first().is_some_and(|p| versioned(p)) {
        parts.remove(0);
    }
    if let Ok(mut log) = log.lock() {
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        log.push(format!("{} /{}{query}", req.method(), parts.join("/")));
    }
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["containers", "json"]) => {
            let wanted = label_filters(req.uri().query().unwrap_or(""));
            let listed: Vec<serde_json::Value> = known
                .iter()
                .filter_map(|name| {
                    let (rest, _n) = name.rsplit_once('-')?;
                    let (project, service) = rest.split_once('-')?;
                    let labels = [
                        format!("com.docker.compose.project={project}"),
                        format!("com.docker.compose.service={service}"),
                    ];
                    wanted.iter().all(|w| labels.contains(w)).then(|| {
                        serde_json::json!({"Id": format!("id-{name}"), "Names": [format!("/{name}")], "Labels": {
                            "com.docker.compose.project": project, "com.docker.compose.service": service}})
                    })
                })
                .collect();
            json(StatusCode::OK, &serde_json::Value::Array(listed).to_string())
        }
        (&Method::GET, ["version"]) => json(
            StatusCode::OK,
            r#"{"Version":"26.1.4","ApiVersion":"1.45","MinAPIVersion":"1.24","Os":"linux","Arch":"amd64"}"#,
        ),
        (_, ["containers", name, _]) if !known.iter().any(|k| k == *name) => {
            json(StatusCode::NOT_FOUND, &format!(r#"{{"message":"No such container: {name}"}}"#))
        }
        (&Method::POST, ["containers", "hang", "restart"]) => std::future::pending().await,
        (&Method::POST, ["containers", _, "restart"]) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        (&Method::GET, ["containers", name, "stats"]) => match *name {
            "cgv1" => json(StatusCode::OK, STATS_V1),
            "stopped" => json(
                StatusCode::OK,
                r#"{"read":"0001-01-01T00:00:00Z","preread":"0001-01-01T00:00:00Z","memory_stats":{},"name":"/stopped","id":"bb"}"#,
            ),
            _ => json(StatusCode::OK, STATS_V2),
        },
        _ => json(StatusCode::NOT_FOUND, r#"{"message":"page not found"}"#),
    }
}

/// The `label` values of a `filters` query parameter (`{"label":["k=v",…]}`, URL-encoded).
fn label_filters(query: &str) -> Vec<String> {
    let Some(encoded) = query.split('&').find_map(|kv| kv.strip_prefix("filters=")) else {
        return Vec::new();
    };
    let decoded = percent_decode(encoded);
    let filters: std::collections::HashMap<String, Vec<String>> =
        serde_json::from_str(&decoded).unwrap_or_default();
    filters.get("label").cloned().unwrap_or_default()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let value = std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(value.unwrap_or(b'%'));
                i += if value.is_some() { 3 } else { 1 };
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers `body` as Docker does: JSON on one line, then a newline (stats is line-delimited).
fn json(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let line = format!("{}\n", body.replace('\n', ""));
    let mut response = Response::new(Full::new(Bytes::from(line)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
