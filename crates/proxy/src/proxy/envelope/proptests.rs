//! Property tests of the proxy's own error answers: whatever the message (newlines, quotes,
//! backslashes, unicode, control characters), the body is one valid JSON object of Dify's
//! shape `{"code","message","status"}` that gives the message back unchanged and holds no raw
//! control character; every refusal is a 503 with a `Retry-After` a client can act on; and no
//! pingora error, whatever its type, source or context, makes the mapping or the response
//! header panic.

use pingora::{Error, ErrorSource, ErrorType};
use proptest::prelude::*;

use super::{ErrorReply, REQUEST_ID};
use crate::admission::Refusal;

/// Messages that stress a JSON writer, and anything else.
fn message() -> impl Strategy<Value = String> {
    let nasty = prop::sample::select(vec![
        "\n",
        "\r\n",
        "\r",
        "\"",
        "\\",
        "\\\"",
        "\u{0}",
        "\u{7}",
        "\u{1b}[31m",
        "\u{7f}",
        "\u{85}",
        "\u{2028}",
        "\u{2029}",
        "\u{feff}",
        "é",
        "日本語",
        "🦀",
        "\u{10ffff}",
        "</script>",
        "data: x\n\n",
        "{\"a\":1}",
        "\t",
    ]);
    prop_oneof![
        any::<String>(),
        prop::collection::vec(prop_oneof![nasty.prop_map(str::to_string), "[ -~]{0,8}"], 0..8)
            .prop_map(|p| p.concat()),
    ]
}

fn reply(message: String) -> impl Strategy<Value = ErrorReply> {
    prop_oneof![
        Just(ErrorReply::server_busy(message.clone())),
        Just(ErrorReply::too_many_requests(message.clone())),
        (prop::sample::select(vec![502u16, 503]), Just(message.clone()))
            .prop_map(|(status, m)| ErrorReply::upstream_unavailable(status, m)),
        Just(ErrorReply::upstream_timeout(message.clone())),
        Just(ErrorReply::payload_too_large(message.clone())),
        Just(ErrorReply::bad_request(message.clone())),
        Just(ErrorReply::not_found(message.clone())),
        Just(ErrorReply::internal(message)),
    ]
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop::sample::select(vec![
        Refusal::QueueFull,
        Refusal::Evicted,
        Refusal::Timeout,
        Refusal::WouldExceedDeadline,
        Refusal::Impatient,
        Refusal::Unavailable,
        Refusal::ShuttingDown,
        Refusal::BackendOverloaded,
    ])
}

fn error_type() -> impl Strategy<Value = ErrorType> {
    use ErrorType::*;
    prop_oneof![
        prop::sample::select(vec![
            ConnectTimedout,
            ConnectRefused,
            ConnectNoRoute,
            TLSWantX509Lookup,
            TLSHandshakeFailure,
            TLSHandshakeTimedout,
            InvalidCert,
            HandshakeError,
            ConnectError,
            BindError,
            AcceptError,
            SocketError,
            ConnectProxyFailure,
            InvalidHTTPHeader,
            H1Error,
            H2Error,
            H2Downgrade,
            InvalidH2,
            ReadError,
            WriteError,
            ReadTimedout,
            WriteTimedout,
            ConnectionClosed,
            FileOpenError,
            FileCreateError,
            FileReadError,
            FileWriteError,
            InternalError,
            UnknownError,
            Custom("custom"),
            CustomCode("custom", 599),
        ]),
        any::<u16>().prop_map(HTTPStatus),
        prop::sample::select(vec![400u16, 408, 413, 431, 500, 502]).prop_map(HTTPStatus),
    ]
}

fn error_source() -> impl Strategy<Value = ErrorSource> {
    prop::sample::select(vec![
        ErrorSource::Upstream,
        ErrorSource::Downstream,
        ErrorSource::Internal,
        ErrorSource::Unset,
    ])
}

/// The body parses as exactly `{"code","message","status"}` with these values, and carries no
/// raw control character (JSON forbids them in strings; a raw newline would also break
/// line-based log shippers and SSE framing).
fn assert_envelope(reply: &ErrorReply) -> Result<(), TestCaseError> {
    let body = reply.body();
    prop_assert!(body.iter().all(|b| *b >= 0x20), "raw control byte in {:?}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {:?}", String::from_utf8_lossy(&body))))?;
    let object = json.as_object().ok_or_else(|| TestCaseError::fail("not an object"))?;
    prop_assert_eq!(object.len(), 3, "{:?}", object);
    prop_assert_eq!(object.get("code").and_then(|c| c.as_str()), Some(reply.code));
    prop_assert_eq!(object.get("message").and_then(|m| m.as_str()), Some(reply.message.as_str()));
    prop_assert_eq!(object.get("status").and_then(|s| s.as_u64()), Some(u64::from(reply.status)));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any message makes a valid envelope that gives it back unchanged.
    #[test]
    fn any_message_makes_a_valid_envelope(reply in message().prop_flat_map(reply)) {
        assert_envelope(&reply)?;
    }

    /// The response header states the body's length and status, with the request id; an id
    /// that cannot be a header value is an error, never a panic.
    #[test]
    fn the_header_fits_the_body(
        reply in message().prop_flat_map(reply),
        request_id in prop_oneof!["[0-9a-f-]{1,36}", any::<String>()],
        retry in prop::option::of(any::<u64>()),
    ) {
        let reply = match retry {
            Some(seconds) => reply.retry_after(seconds),
            None => reply,
        };
        let body = reply.body();
        match reply.header(&request_id, body.len()) {
            Ok(header) => {
                prop_assert_eq!(header.status.as_u16(), reply.status);
                let get = |name: &str| header.headers.get(name).map(|v| v.as_bytes().to_vec());
                prop_assert_eq!(get("content-length"), Some(body.len().to_string().into_bytes()));
                prop_assert_eq!(get("content-type"), Some(b"application/json".to_vec()));
                prop_assert_eq!(get(REQUEST_ID), Some(request_id.clone().into_bytes()));
                prop_assert_eq!(get("retry-after"), retry.map(|s| s.to_string().into_bytes()));
            }
            Err(_) => prop_assert!(
                http::HeaderValue::from_str(&request_id).is_err(),
                "a valid request id {:?} was refused", request_id
            ),
        }
    }

    /// Every refusal is a 503 with a `Retry-After` of 1..=60 seconds (1 when shutting down)
    /// and a valid envelope, whatever the queue's estimate.
    #[test]
    fn every_refusal_is_a_503_to_retry(refusal in refusal(), estimate in prop_oneof![any::<u64>(), 0u64..120]) {
        let reply = ErrorReply::refused(refusal, estimate);
        prop_assert_eq!(reply.status, 503);
        let expected = if refusal == Refusal::ShuttingDown { 1 } else { estimate.clamp(1, 60) };
        prop_assert_eq!(reply.retry_after, Some(expected));
        let code = if refusal == Refusal::Unavailable { "upstream_unavailable" } else { "server_busy" };
        prop_assert_eq!(reply.code, code);
        assert_envelope(&reply)?;
    }

    /// Any pingora error maps without panicking: nothing for a client that is gone, else a
    /// valid envelope whose context never leaks into the message.
    #[test]
    fn any_pingora_error_maps_to_an_envelope(
        etype in error_type(),
        source in error_source(),
        context in prop::option::of(message()),
        caused in any::<bool>(),
    ) {
        let cause = caused.then(|| Error::new(ErrorType::ConnectionClosed));
        let error = Error::create(etype.clone(), source.clone(), context.clone().map(Into::into), cause.map(|c| c.into()));
        let Some(reply) = ErrorReply::from_error(&error) else {
            let gone = matches!(etype, ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed);
            prop_assert!(gone && source == ErrorSource::Downstream, "{:?} from {:?} got no answer", etype, source);
            return Ok(());
        };
        assert_envelope(&reply)?;
        if let Some(context) = context.filter(|c| c.len() > 8) {
            prop_assert!(!reply.message.contains(&context), "the context leaked: {}", reply.message);
        }
        match etype {
            ErrorType::HTTPStatus(code) => prop_assert_eq!(reply.status, code),
            _ => prop_assert!((400..600).contains(&reply.status), "{:?}: {}", etype, reply.status),
        }
        // Whatever the status, building the header is an answer, not a panic.
        let _ = reply.header("id", reply.body().len());
    }
}
