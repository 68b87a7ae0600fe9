//! The blocking HTTP client for one admin API: where it listens, the bearer token, and what
//! a call's failure means (no answer, an error envelope, or an answer ctl cannot read).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Bound of each HTTP request; `--timeout` bounds the whole `--wait`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest per-request timeout near the `--wait` deadline: a zero timeout would fail at once.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_millis(100);

/// Where the admin API listens: `host:port`, as given and as used in URLs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AdminAddr(pub(super) String);

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `host:port` or `http://host:port` (a trailing `/` is fine); no TLS, no path.
pub(super) fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    let s = s.trim();
    if s.starts_with("https://") {
        return Err("the admin API speaks plain HTTP; give host:port or http://host:port".into());
    }
    let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    if rest.contains('/') {
        return Err("give host:port, without a path".into());
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(AdminAddr(rest.into())),
        _ => Err(format!("expected host:port (e.g. 127.0.0.1:9090), got {s:?}")),
    }
}

/// Why a call to the admin API did not give a usable answer.
#[derive(Debug, PartialEq)]
pub(super) enum CallError {
    /// No answer: connect, timeout, I/O. Worth retrying while waiting.
    Transport(String),
    /// An answer with an error status, from the JSON envelope when there was one.
    Api { status: u16, code: String, message: String, hint: &'static str },
    /// A success status with a body ctl cannot read.
    Invalid(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) | CallError::Invalid(e) => f.write_str(e),
            CallError::Api { status, code, message, hint } => {
                write!(f, "{message} ({status}")?;
                if !code.is_empty() {
                    write!(f, " {code}")?;
                }
                write!(f, "){hint}")
            }
        }
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.to_string()
    }
}

/// A blocking client for one admin API.
pub(super) struct Client {
    pub(super) agent: ureq::Agent,
    pub(super) admin: AdminAddr,
    pub(super) token: Option<String>,
}

impl Client {
    pub(super) fn new(admin: AdminAddr, token: Option<String>) -> Client {
        let config = ureq::Agent::config_builder()
            // Error statuses carry the envelope whose message we quote; read them as answers.
            .http_status_as_error(false)
            // HTTP_PROXY and friends are for the outside world, not a loopback admin port.
            .proxy(None)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("dify-shaper-ctl/", env!("CARGO_PKG_VERSION")))
            .build();
        Client { agent: ureq::Agent::new_with_config(config), admin, token: token.filter(|t| !t.is_empty()) }
    }

    /// `POST path` (no body), expecting a JSON answer of type `T`.
    pub(super) fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        let mut request = self.agent.post(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let result = request.config().timeout_global(Some(REQUEST_TIMEOUT)).build().send_empty();
        self.answer("POST", path, REQUEST_TIMEOUT, result)
    }

    /// `GET path`; the request's timeout is cut to what is left before `deadline`.
    pub(super) fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        deadline: Option<Instant>,
    ) -> Result<T, CallError> {
        let timeout = match deadline {
            Some(deadline) => {
                deadline.saturating_duration_since(Instant::now()).clamp(MIN_REQUEST_TIMEOUT, REQUEST_TIMEOUT)
            }
            None => REQUEST_TIMEOUT,
        };
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let result = request.config().timeout_global(Some(timeout)).build().call();
        self.answer("GET", path, timeout, result)
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    fn answer<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
        result: Result<http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, CallError> {
        let mut response = result.map_err(|e| self.transport_error(&e, timeout))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().map_err(|e| {
            CallError::Transport(format!("reading the answer from the admin API at {}: {e}", self.admin))
        })?;
        parse_answer(status, &body, self.token.is_some()).map_err(|e| match e {
            CallError::Invalid(e) => CallError::Invalid(format!("{method} {path} at {}: {e}", self.admin)),
            e => e,
        })
    }

    pub(super) fn transport_error(&self, e: &ureq::Error, timeout: Duration) -> CallError {
        let admin = &self.admin;
        CallError::Transport(match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
                "cannot connect to the admin API at {admin}: connection refused; is dify-shaper \
                 running with its admin listener there? Point at it with --admin ADDR \
                 (or DIFY_SHAPER_ADMIN)"
            ),
            ureq::Error::Timeout(_) => format!(
                "the admin API at {admin} did not answer within {}",
                humantime::format_duration(timeout)
            ),
            ureq::Error::HostNotFound => {
                format!("cannot resolve the admin API host {admin}; check --admin ADDR")
            }
            e => format!("request to the admin API at {admin} failed: {e}"),
        })
    }
}

/// Turns a status and body into `T` (2xx) or a [`CallError::Api`] quoting the envelope.
pub(super) fn parse_answer<T: serde::de::DeserializeOwned>(
    status: u16,
    body: &str,
    token_sent: bool,
) -> Result<T, CallError> {
    if (200..300).contains(&status) {
        return serde_json::from_str(body)
            .map_err(|e| CallError::Invalid(format!("unexpected answer ({e}): {}", snippet(body))));
    }
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        code: String,
        message: String,
    }
    let (code, message) = match serde_json::from_str::<Envelope>(body) {
        Ok(envelope) => (envelope.code, envelope.message),
        Err(_) if body.trim().is_empty() => (String::new(), "the admin API refused".into()),
        Err(_) => (String::new(), snippet(body)),
    };
    let hint =
        if status == 401 && !token_sent { "; pass --token or set DIFY_SHAPER_ADMIN_TOKEN" } else { "" };
    Err(CallError::Api { status, code, message, hint })
}

/// The start of a body for an error line: one line, bounded.
pub(super) fn snippet(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}
