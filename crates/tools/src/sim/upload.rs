//! `POST /v1/files/upload` (multipart/form-data): the body is streamed and counted chunk by
//! chunk, never held (only its first 16 KiB are kept to read the file part's name and type),
//! so a 100 MB upload runs in flat memory.
//!
//! The answer's `size` is the total number of request-body bytes received (multipart framing
//! included), not the file part alone.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::body::SimBody;
use super::conn::ConnCtx;
use super::envelope;
use super::ids::{self, Entropy};
use super::request;
use super::stats::ActiveGuard;

/// Bytes kept from the start of the body to parse the first part's headers.
const HEAD_KEEP: usize = 16 * 1024;

/// Handles an upload.
pub(crate) async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<SimBody> {
    let is_multipart = request::header(req.headers(), "content-type")
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        return no_file();
    }
    let cfg = ctx.shared.config();
    let Some(_db) = ctx.shared.limits.try_db(cfg.db_connections) else {
        return envelope::db_refused();
    };
    let _active = ActiveGuard::new(ctx.shared.stats.clone());
    let mut entropy = Entropy::new(ids::seed_of(req.headers()));
    let request_id = request::header(req.headers(), ids::REQUEST_ID_HEADER).map(str::to_owned);

    let mut body = req.into_body();
    let mut head: Vec<u8> = Vec::with_capacity(HEAD_KEEP);
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return envelope::invalid_param("incomplete request body");
        };
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            ctx.shared.stats.add_upload_bytes(data.len() as u64);
            let room = HEAD_KEEP.saturating_sub(head.len());
            head.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    let Some(part) = first_file_part(&head) else {
        return no_file();
    };
    // The file is stored once its body is complete: that is when an upload has happened.
    ctx.shared.run_log.record("upload", "/v1/files/upload", request_id.as_deref(), false);
    let extension = part.name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    envelope::json(
        StatusCode::CREATED,
        &json!({
            "id": entropy.uuid(),
            "name": part.name,
            "size": total,
            "extension": extension,
            "mime_type": part.mime_type,
            "created_by": entropy.uuid(),
            "created_at": entropy.created_at(),
        }),
    )
}

fn no_file() -> Response<SimBody> {
    envelope::error(StatusCode::BAD_REQUEST, "no_file_uploaded", "Please upload your file.")
}

/// Name and type of the first part that carries a `filename`.
#[derive(Debug, PartialEq, Eq)]
struct FilePart {
    name: String,
    mime_type: String,
}

/// Scans the part headers in `head` for the first `filename="…"` and the `Content-Type`
/// of that part.
fn first_file_part(head: &[u8]) -> Option<FilePart> {
    let text = String::from_utf8_lossy(head);
    for block in text.split("\r\n\r\n") {
        let Some(name) = filename_in(block) else {
            continue;
        };
        let mime_type = block
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-type").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        return Some(FilePart { name, mime_type });
    }
    None
}

fn filename_in(block: &str) -> Option<String> {
    let lower = block.to_ascii_lowercase();
    let at = lower.find("filename=\"")? + "filename=\"".len();
    let rest = &block[at..];
    let end = rest.find('"')?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_file_part() {
        let head = b"--b\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nu1\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"Report.PDF\"\r\nContent-Type: application/pdf\r\n\r\n%PDF...";
        assert_eq!(
            first_file_part(head),
            Some(FilePart { name: "Report.PDF".into(), mime_type: "application/pdf".into() })
        );
        assert_eq!(first_file_part(b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1"), None);
    }
}
