//! Property tests of the final `error` event written into a broken stream: whatever pingora
//! error ended it (any type, source, context text with newlines, quotes, unicode or control
//! characters, and any cause), the frame is exactly one well-formed server-sent event — only
//! `data:` (or `event:`) lines, no raw CR or LF inside a line, terminated by one blank line —
//! whose data is the Dify-style JSON error that SDKs parse.

use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use proptest::prelude::*;

use super::{can_append, error_frame};

fn error_type() -> impl Strategy<Value = ErrorType> {
    use ErrorType::*;
    prop_oneof![
        prop::sample::select(vec![
            ConnectTimedout,
            ConnectRefused,
            ConnectNoRoute,
            HandshakeError,
            ConnectError,
            SocketError,
            InvalidHTTPHeader,
            H1Error,
            H2Error,
            InvalidH2,
            ReadError,
            WriteError,
            ReadTimedout,
            WriteTimedout,
            ConnectionClosed,
            InternalError,
            UnknownError,
            Custom("custom"),
            CustomCode("custom", 1),
        ]),
        any::<u16>().prop_map(HTTPStatus),
    ]
}

fn text() -> impl Strategy<Value = String> {
    let nasty = prop::sample::select(vec![
        "\n", "\r", "\r\n", "\n\n", "data: ", "event: x", "\"", "\\", "\u{0}", "é", "🦀", "\u{2028}",
    ]);
    prop_oneof![
        any::<String>(),
        prop::collection::vec(prop_oneof![nasty.prop_map(str::to_string), "[ -~]{0,6}"], 0..8)
            .prop_map(|p| p.concat())
    ]
}

/// Parses one SSE frame the way the spec's line rules read it: the fields of its lines, in
/// order; fails unless the frame is exactly its lines and one terminating blank line.
fn parse_frame(frame: &str) -> Result<Vec<(String, String)>, String> {
    let body = frame.strip_suffix("\n\n").ok_or("not terminated by a blank line")?;
    if body.is_empty() {
        return Err("an empty event".into());
    }
    if body.contains('\r') {
        return Err("a raw CR, which SSE reads as a line break".into());
    }
    body.split('\n')
        .map(|line| {
            if line.is_empty() {
                return Err("a blank line inside the frame ends the event early".to_string());
            }
            let (field, value) =
                line.split_once(':').ok_or_else(|| format!("a line without a field: {line:?}"))?;
            if !matches!(field, "data" | "event") {
                return Err(format!("an unexpected field {field:?}"));
            }
            Ok((field.to_string(), value.strip_prefix(' ').unwrap_or(value).to_string()))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any error ends the stream with one well-formed `error` event whose JSON says what
    /// happened, and whose text is the proxy's own (the context is not echoed).
    #[test]
    fn the_error_frame_is_one_well_formed_event(
        etype in error_type(),
        source in prop::sample::select(vec![ErrorSource::Upstream, ErrorSource::Downstream, ErrorSource::Internal, ErrorSource::Unset]),
        context in prop::option::of(text()),
        caused in any::<bool>(),
    ) {
        let cause = caused.then(|| Error::explain(ErrorType::ReadError, "cause\nwith a newline"));
        let error = Error::create(etype.clone(), source, context.map(Into::into), cause.map(|c| c.into()));
        let bytes = error_frame(&error);
        let frame = std::str::from_utf8(&bytes).map_err(|e| TestCaseError::fail(format!("not UTF-8: {e}")))?;
        let fields = parse_frame(frame).map_err(|e| TestCaseError::fail(format!("{e}: {frame:?}")))?;
        let data: Vec<&str> = fields.iter().filter(|(f, _)| f == "data").map(|(_, v)| v.as_str()).collect();
        // Several data lines would be joined with newlines by the client; one is what is sent.
        prop_assert_eq!(data.len(), 1, "{:?}", frame);
        let json: serde_json::Value = serde_json::from_str(data[0])
            .map_err(|e| TestCaseError::fail(format!("data is not JSON ({e}): {frame:?}")))?;
        prop_assert_eq!(json["event"].as_str(), Some("error"));
        let (status, code) = if etype == ErrorType::ReadTimedout { (504, "upstream_timeout") } else { (502, "upstream_lost") };
        prop_assert_eq!(json["status"].as_u64(), Some(status));
        prop_assert_eq!(json["code"].as_str(), Some(code));
        prop_assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()), "{:?}", json);
    }

    /// More may be appended exactly when the response announced no length.
    #[test]
    fn appending_needs_an_unannounced_length(length in prop::option::of(any::<u64>()), status in 200u16..600) {
        let mut header = ResponseHeader::build(status, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Some(length) = length {
            header.insert_header(http::header::CONTENT_LENGTH, length.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(can_append(&header), length.is_none());
    }
}

/// The frame parser above refuses what a broken writer would produce.
#[test]
fn the_frame_parser_refuses_broken_frames() {
    assert!(parse_frame("data: {}\n\n").is_ok());
    assert!(parse_frame("event: error\ndata: {}\n\n").is_ok());
    assert!(parse_frame("data: {}\n").is_err(), "unterminated");
    assert!(parse_frame("data: a\n\nb\n\n").is_err(), "two events");
    assert!(parse_frame("data: a\rb\n\n").is_err(), "raw CR");
    assert!(parse_frame("retry: 1\n\n").is_err(), "unexpected field");
}
