//! Keeping secrets out of logs: Dify app keys (`Authorization: Bearer app-…`) are shown as
//! `app-…abcd`, and query strings lose their values.

/// Redacts an `Authorization` header value to `app-…abcd` (prefix up to the first `-`, then
/// the last four characters). Anything that is not a bearer token becomes `redacted`.
pub fn redact_authorization(value: &str) -> String {
    let Some(token) = value.trim().strip_prefix("Bearer ").map(str::trim) else {
        return "redacted".to_string();
    };
    redact_key(token)
}

/// Redacts a bare key to `app-…abcd`.
pub fn redact_key(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < 12 {
        return "…".to_string();
    }
    let prefix: String = match token.split_once('-') {
        Some((p, _)) if p.len() <= 8 => format!("{p}-"),
        _ => String::new(),
    };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

/// `path?a=1&b=2` → `path?a&b`: keeps which parameters were sent, never their values.
pub fn path_without_query_values(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        None => path_and_query.to_string(),
        Some((path, query)) => {
            let keys: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
                .collect();
            format!("{path}?{}", keys.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_keys_show_only_their_tail() {
        assert_eq!(redact_authorization("Bearer app-abcdefghijklmnopqrstabcd"), "app-…abcd");
        assert_eq!(redact_authorization("Basic dXNlcjpwYXNz"), "redacted");
        assert_eq!(redact_authorization("Bearer short"), "…");
        let console = redact_authorization("Bearer eyJhbGciOiJIUzI1NiJ9.payload.sigXYZW");
        assert_eq!(console, "…XYZW");
        assert!(!console.contains("payload"));
    }

    #[test]
    fn query_values_are_dropped() {
        assert_eq!(path_without_query_values("/v1/messages?user=bob&limit=20"), "/v1/messages?user&limit");
        assert_eq!(path_without_query_values("/health"), "/health");
        assert_eq!(path_without_query_values("/x?flag"), "/x?flag");
    }
}
