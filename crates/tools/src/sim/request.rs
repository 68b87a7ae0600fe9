//! Reading what a request asks for: its body (bounded), the app key, the run parameters of
//! the JSON body, and the simulator's per-request override headers (`X-Sim-Service-Time`,
//! `X-Sim-Events`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

/// Overrides the sampled service time of one run (humantime, e.g. `1s`, `250ms`).
pub const SERVICE_TIME_HEADER: &str = "x-sim-service-time";
/// Overrides the number of stream events of one run.
pub const EVENTS_HEADER: &str = "x-sim-events";
/// Largest accepted value of `X-Sim-Events`.
pub const MAX_EVENTS: usize = 100_000;
/// Largest JSON body of a run request.
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// A header as `&str`, if present and valid UTF-8.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The app key of `Authorization: Bearer <key>` (`""` when absent: such requests share one
/// anonymous app for `APP_MAX_ACTIVE_REQUESTS`).
pub(crate) fn app_key(headers: &HeaderMap) -> String {
    header(headers, "authorization")
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .unwrap_or("")
        .to_owned()
}

/// Per-request overrides from `X-Sim-*` headers.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Overrides {
    pub(crate) service_time: Option<Duration>,
    pub(crate) events: Option<usize>,
}

impl Overrides {
    /// Parses the override headers; a malformed one is a 400 (a test bug worth surfacing).
    pub(crate) fn parse(headers: &HeaderMap) -> Result<Self, String> {
        let service_time = header(headers, SERVICE_TIME_HEADER)
            .map(|v| {
                humantime::parse_duration(v.trim())
                    .map_err(|e| format!("invalid X-Sim-Service-Time {v:?}: {e}"))
            })
            .transpose()?;
        let events = header(headers, EVENTS_HEADER)
            .map(|v| match v.trim().parse::<usize>() {
                Ok(n) if n <= MAX_EVENTS => Ok(n),
                _ => Err(format!("invalid X-Sim-Events {v:?} (0..={MAX_EVENTS})")),
            })
            .transpose()?;
        Ok(Overrides { service_time, events })
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Longer than the limit.
    TooLarge,
    /// The connection failed mid-body (client gone).
    Io,
}

/// Reads a whole body of at most `max` bytes.
pub(crate) async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Io)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The run parameters Dify reads from the JSON body.
#[derive(Debug, PartialEq)]
pub(crate) struct RunParams {
    /// `inputs` (an object; `{}` when absent).
    pub(crate) inputs: Value,
    /// `response_mode == "streaming"` (absent means blocking, as in Dify).
    pub(crate) streaming: bool,
    /// `conversation_id` (chat), if any.
    pub(crate) conversation_id: Option<String>,
}

impl RunParams {
    /// Validates a run body: a JSON object; `inputs`, when present, an object;
    /// `response_mode`, when present, `blocking` or `streaming`.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("Invalid JSON body: {e}"))?;
        let Value::Object(obj) = v else {
            return Err("The request body must be a JSON object.".to_owned());
        };
        let inputs = match obj.get("inputs") {
            None | Some(Value::Null) => json!({}),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err("inputs must be an object".to_owned()),
        };
        let streaming = match obj.get("response_mode") {
            None | Some(Value::Null) => false,
            Some(Value::String(m)) if m == "blocking" => false,
            Some(Value::String(m)) if m == "streaming" => true,
            Some(_) => return Err("response_mode must be 'blocking' or 'streaming'".to_owned()),
        };
        let conversation_id = obj.get("conversation_id").and_then(Value::as_str).map(str::to_owned);
        Ok(RunParams { inputs, streaming, conversation_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn app_key_from_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(app_key(&h), "");
        h.insert("authorization", HeaderValue::from_static("Bearer app-abc"));
        assert_eq!(app_key(&h), "app-abc");
        h.insert("authorization", HeaderValue::from_static("Basic xyz"));
        assert_eq!(app_key(&h), "");
    }

    #[test]
    fn overrides_parse_and_reject() {
        let mut h = HeaderMap::new();
        assert_eq!(Overrides::parse(&h), Ok(Overrides::default()));
        h.insert(SERVICE_TIME_HEADER, HeaderValue::from_static("1s"));
        h.insert(EVENTS_HEADER, HeaderValue::from_static("7"));
        assert_eq!(
            Overrides::parse(&h),
            Ok(Overrides { service_time: Some(Duration::from_secs(1)), events: Some(7) })
        );
        h.insert(EVENTS_HEADER, HeaderValue::from_static("-1"));
        assert!(Overrides::parse(&h).is_err());
        h.remove(EVENTS_HEADER);
        h.insert(SERVICE_TIME_HEADER, HeaderValue::from_static("soon"));
        assert!(Overrides::parse(&h).is_err());
    }

    #[test]
    fn run_params() {
        let p = RunParams::parse(br#"{"inputs":{"a":1},"response_mode":"streaming","user":"u"}"#);
        assert_eq!(p, Ok(RunParams { inputs: json!({"a":1}), streaming: true, conversation_id: None }));
        let p = RunParams::parse(br#"{"conversation_id":"c"}"#);
        assert_eq!(p.map(|p| (p.streaming, p.conversation_id)), Ok((false, Some("c".into()))));
        for bad in [&b""[..], b"{", b"[]", br#"{"inputs":3}"#, br#"{"response_mode":"fast"}"#] {
            assert!(RunParams::parse(bad).is_err());
        }
    }
}
