//! The `http` action: one plain-HTTP/1.1 request on a fresh connection; 2xx is success.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{one_line, ActionError};

/// How much of an error response's body goes into the error.
const BODY_START: usize = 300;

/// Calls `url` (placeholders already filled), bounded by `timeout` as a whole.
pub(super) async fn call(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), ActionError> {
    let fail =
        |reason: String| ActionError::Http { method: method.to_string(), url: url.to_string(), reason };
    match tokio::time::timeout(timeout, attempt(method, url, headers)).await {
        Ok(result) => result.map_err(fail),
        Err(_) => Err(ActionError::HttpTimeout { method: method.to_string(), url: url.to_string(), timeout }),
    }
}

async fn attempt(method: &str, url: &str, headers: &[(String, String)]) -> Result<(), String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".to_string());
    }
    let host = uri.host().ok_or("URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());

    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority)
        .header(USER_AGENT, concat!("dify-shaper/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid request: {e}"))?;
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        // A configured Host replaces the derived one; anything else adds to it.
        if name == HOST {
            request.headers_mut().insert(name, value);
        } else {
            request.headers_mut().append(name, value);
        }
    }

    // Brackets of an IPv6 literal are URL syntax, not part of the address.
    let connect_host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((connect_host, port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", authority))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    // The connection task ends with the request; abort it on every path out of here.
    let connection = AbortOnDrop(tokio::spawn(connection));

    let response = sender.send_request(request).await.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if status.is_success() {
        drop(connection);
        return Ok(());
    }
    let mut body = response.into_body();
    let mut start = Vec::new();
    while start.len() < BODY_START {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    start.extend_from_slice(data);
                }
            }
            // A broken body after a failing status still leaves the status to report.
            Some(Err(_)) | None => break,
        }
    }
    drop(connection);
    start.truncate(BODY_START);
    let text = one_line(String::from_utf8_lossy(&start).trim_end_matches('\u{FFFD}'));
    Err(if text.is_empty() { status.to_string() } else { format!("{status}: {text}") })
}

/// Aborts the spawned connection task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use http::{Response, StatusCode};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use super::*;
    use crate::config::maintenance::Action;
    use crate::maintenance::actions::Target;

    /// A request the test server saw: method, path and query, and the `x-token` header.
    type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

    /// Serves every connection with `status` and a body, recording the requests.
    async fn server(status: StatusCode, body: &'static str) -> (SocketAddr, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Seen = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let token = req.headers().get("x-token").and_then(|v| v.to_str().ok()).map(String::from);
                    let path = req.uri().path_and_query().map_or("", |p| p.as_str()).to_string();
                    if let Ok(mut seen) = record.lock() {
                        seen.push((req.method().to_string(), path, token));
                    }
                    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = status;
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (addr, seen)
    }

    fn action(url: String, timeout: Duration) -> Action {
        Action::Http {
            method: "POST".into(),
            url,
            headers: vec![("x-token".into(), "restart-{upstream}-{port}".into())],
            timeout,
        }
    }

    fn target() -> Target {
        Target { upstream: "dify".into(), server: Some("127.0.0.1:5001".into()) }
    }

    #[tokio::test]
    async fn success_on_200_sends_method_path_and_headers() {
        let (addr, seen) = server(StatusCode::OK, "ok").await;
        let url = format!("http://{addr}/restart/{{upstream}}?server={{server}}");
        action(url, Duration::from_secs(30)).run(&target()).await.expect("200 is success");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            vec![(
                "POST".to_string(),
                "/restart/dify?server=127.0.0.1:5001".to_string(),
                Some("restart-dify-5001".to_string())
            )]
        );
    }

    #[tokio::test]
    async fn failure_on_500_names_status_and_body() {
        let (addr, _) = server(StatusCode::INTERNAL_SERVER_ERROR, "backend\nis stuck").await;
        let url = format!("http://{addr}/restart");
        let err = action(url.clone(), Duration::from_secs(30)).run(&target()).await.expect_err("500");
        assert_eq!(
            err.to_string(),
            format!("http POST {url}: 500 Internal Server Error: backend | is stuck")
        );
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and holds connections without ever answering.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let url = format!("http://{addr}/restart");
        let started = Instant::now();
        let err = action(url.clone(), Duration::from_millis(300)).run(&target()).await.expect_err("timeout");
        assert_eq!(err.to_string(), format!("http POST {url}: timed out after 300ms"));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        holder.abort();
    }

    #[tokio::test]
    async fn refused_connection_is_named() {
        // A port that was just free: nothing listens there any more.
        let addr = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        let url = format!("http://{addr}/restart");
        let err = action(url.clone(), Duration::from_secs(30)).run(&target()).await.expect_err("refused");
        let text = err.to_string();
        assert!(text.starts_with(&format!("http POST {url}: cannot connect to {addr}: ")), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[tokio::test]
    async fn https_and_garbage_urls_are_rejected() {
        let err = action("https://example.com/".into(), Duration::from_secs(5)).run(&target()).await;
        assert_eq!(
            err.expect_err("https").to_string(),
            "http POST https://example.com/: only http:// URLs are supported"
        );
        let err = action("not a url".into(), Duration::from_secs(5)).run(&target()).await;
        assert!(err.expect_err("garbage").to_string().contains("invalid URL"));
    }
}
