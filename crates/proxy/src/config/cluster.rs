//! `[cluster]`: several dify-shaper replicas in front of one Dify sharing state through Redis
//! (the Redis Dify already runs). Without `redis`, a replica decides everything alone, as
//! before. Validated here: the URL (scheme, password, db; `rediss://` for TLS), the CA a TLS
//! Redis is checked against, the node name, the time budget of one Redis call, the key prefix.

use serde::{Deserialize, Serialize, Serializer};

use super::units::HumanDuration;

/// The time budget of one Redis call when `[cluster] call_timeout` is not set: a round trip on
/// a local network is well under a millisecond; past this the request goes on locally.
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(5);

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://[:password@]host[:port][/db]`, `rediss://…` for TLS (`#insecure` at the end
    /// skips checking the server's certificate), or `redis+unix:///path`; `--redis` and
    /// `DIFY_SHAPER_REDIS` replace it.
    #[serde(default)]
    pub redis: Option<String>,
    /// `rediss://` only: a PEM file of the CA that signed the server's certificate (default:
    /// the system's roots).
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// This replica's name in the group (default: the hostname).
    #[serde(default)]
    pub node: Option<String>,
    /// Longest wait for one Redis call before the replica decides locally (1ms..=1s).
    #[serde(default)]
    pub call_timeout: Option<HumanDuration>,
    /// Prefix of every key written (default `dify-shaper`): replicas with the same prefix form
    /// one group.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

/// A Redis URL; shown with its password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as written (password included): for the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// The URL with any password replaced by `***`.
    pub fn masked(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or("", |(u, _)| u);
                format!("{scheme}://{user}:***@{host}")
            }
            None => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

/// `[cluster]` after validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSettings {
    /// The shared Redis; `None`: this replica is on its own.
    pub redis: Option<RedisUrl>,
    /// The CA a `rediss://` server's certificate is checked against (`None`: system roots).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// This replica's name.
    pub node: String,
    /// Time budget of one Redis call.
    pub call_timeout: HumanDuration,
    /// Prefix of every key.
    pub key_prefix: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis: None,
            tls_ca_file: None,
            node: default_node(),
            call_timeout: HumanDuration(DEFAULT_CALL_TIMEOUT),
            key_prefix: "dify-shaper".into(),
        }
    }
}

/// The hostname (a container's id in compose, the pod name in Kubernetes).
fn default_node() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dify-shaper".into())
}

/// Validates `[cluster]`; `redis_override` (from `--redis`/`DIFY_SHAPER_REDIS`) replaces its
/// URL. Errors name the key.
pub fn build(
    raw: &RawCluster,
    redis_override: Option<&str>,
) -> Result<ClusterSettings, (&'static str, String)> {
    let defaults = ClusterSettings::default();
    let redis = match redis_override.or(raw.redis.as_deref()).map(str::trim).filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => {
            let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
                (
                    "cluster.redis",
                    format!("not a Redis URL ({e}): expected redis://[:password@]host[:port][/db]"),
                )
            })?;
            let _ = info;
            Some(RedisUrl(url.to_string()))
        }
    };
    let tls_ca_file = match (&raw.tls_ca_file, &redis) {
        (None, _) => None,
        (Some(path), Some(url)) if url.is_tls() => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| ("cluster.tls_ca_file", format!("{}: {e}", path.display())))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(("cluster.tls_ca_file", format!("{}: not a PEM certificate", path.display())));
            }
            Some(path.clone())
        }
        (Some(_), _) => {
            return Err(("cluster.tls_ca_file", "set, but cluster.redis is not a rediss:// (TLS) URL".into()))
        }
    };
    let node = match raw.node.as_deref().map(str::trim) {
        None => defaults.node,
        Some(n) if valid_name(n) => n.to_string(),
        Some(n) => return Err(("cluster.node", format!("{n:?}: use 1-64 of a-z A-Z 0-9 . _ -"))),
    };
    let call_timeout = raw.call_timeout.unwrap_or(defaults.call_timeout);
    let ms = std::time::Duration::from_millis;
    if !(ms(1)..=ms(1000)).contains(&call_timeout.0) {
        return Err(("cluster.call_timeout", format!("{call_timeout} is out of range: expected 1ms..=1s")));
    }
    let key_prefix = match raw.key_prefix.as_deref() {
        None => defaults.key_prefix,
        Some(p) if valid_name(p) => p.to_string(),
        Some(p) => return Err(("cluster.key_prefix", format!("{p:?}: use 1-64 of a-z A-Z 0-9 . _ -"))),
    };
    Ok(ClusterSettings { redis, tls_ca_file, node, call_timeout, key_prefix })
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let url = RedisUrl("redis://:s3cret@10.0.0.5:6379/2".into());
        assert_eq!(url.masked(), "redis://:***@10.0.0.5:6379/2");
        assert_eq!(format!("{url} {url:?}"), "redis://:***@10.0.0.5:6379/2 redis://:***@10.0.0.5:6379/2");
        assert_eq!(serde_json::to_string(&url).expect("json"), "\"redis://:***@10.0.0.5:6379/2\"");
        let user = RedisUrl("redis://app:pw@h/0".into());
        assert_eq!(user.masked(), "redis://app:***@h/0");
        assert_eq!(RedisUrl("redis://h:6379".into()).masked(), "redis://h:6379");
    }

    #[test]
    fn bad_values_name_their_key() {
        let raw = |f: fn(&mut RawCluster)| {
            let mut r = RawCluster::default();
            f(&mut r);
            build(&r, None).err().map(|(k, _)| k)
        };
        assert_eq!(raw(|r| r.redis = Some("http://x".into())), Some("cluster.redis"));
        assert_eq!(raw(|r| r.node = Some("a b".into())), Some("cluster.node"));
        assert_eq!(raw(|r| r.key_prefix = Some(String::new())), Some("cluster.key_prefix"));
        assert_eq!(
            raw(|r| r.call_timeout = Some(HumanDuration(std::time::Duration::from_secs(5)))),
            Some("cluster.call_timeout")
        );
        let ok = build(&RawCluster::default(), Some("redis://127.0.0.1:6379/1")).expect("override");
        assert_eq!(ok.redis.map(|u| u.expose().to_string()), Some("redis://127.0.0.1:6379/1".into()));
    }
}
