//! What a reload may change: the settings fixed when the process started ([`RestartOnly`]),
//! and which parts of the config a new one changes ([`changed`]). Pure; the reload itself
//! (load, log, count, install) is [`crate::reload`].
//!
//! A reload applies everything else and keeps the running value of each restart-only
//! setting (written back into the new config, so `/status` shows what is really in force),
//! naming it in the log and the outcome.

use serde::Serialize;

use super::{ByteSize, Config, HumanDuration, LogFormat};

/// A setting the new config wants that only a restart can apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartNeeded {
    /// Dotted key, e.g. `server.listen`.
    pub setting: &'static str,
    /// The value in the new config.
    pub wanted: String,
    /// The value still in force.
    pub running: String,
}

/// The settings read once, at start-up: the listeners (pingora binds them before serving),
/// pingora's process settings (threads, keep-alive pool, shutdown grace), the log
/// subscriber (installed once) and the cluster link (`[cluster]`, connected once).
#[derive(Debug, Clone, PartialEq)]
pub struct RestartOnly {
    listen: Vec<std::net::SocketAddr>,
    admin: std::net::SocketAddr,
    threads: usize,
    client_read_buffer: ByteSize,
    upstream_keepalive_pool: usize,
    shutdown_grace: HumanDuration,
    log_format: LogFormat,
    log_level: String,
    cluster: super::cluster::ClusterSettings,
}

impl RestartOnly {
    /// The restart-only settings of the config the process started with.
    pub fn of(config: &Config) -> Self {
        let s = &config.server;
        RestartOnly {
            listen: s.listen.clone(),
            admin: s.admin,
            threads: s.threads,
            client_read_buffer: s.client_read_buffer,
            upstream_keepalive_pool: s.upstream_keepalive_pool,
            shutdown_grace: s.shutdown_grace,
            log_format: config.log.format,
            log_level: config.log.level.clone(),
            cluster: config.cluster.clone(),
        }
    }

    /// The client listen addresses in force (a reload cannot move them).
    pub fn listen(&self) -> &[std::net::SocketAddr] {
        &self.listen
    }

    /// The shutdown grace in force (fixed at start: pingora's backstop is set from it).
    pub fn shutdown_grace(&self) -> std::time::Duration {
        self.shutdown_grace.0
    }

    /// Where `new` differs from what is running.
    pub fn differences(&self, new: &Config) -> Vec<RestartNeeded> {
        let wanted = RestartOnly::of(new);
        let mut out = Vec::new();
        let mut check = |setting: &'static str, wanted: String, running: String| {
            if wanted != running {
                out.push(RestartNeeded { setting, wanted, running });
            }
        };
        let addrs =
            |a: &[std::net::SocketAddr]| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        check("server.listen", addrs(&wanted.listen), addrs(&self.listen));
        check("server.admin", wanted.admin.to_string(), self.admin.to_string());
        check("server.threads", wanted.threads.to_string(), self.threads.to_string());
        check(
            "server.client_read_buffer",
            wanted.client_read_buffer.to_string(),
            self.client_read_buffer.to_string(),
        );
        check(
            "server.upstream_keepalive_pool",
            wanted.upstream_keepalive_pool.to_string(),
            self.upstream_keepalive_pool.to_string(),
        );
        check("server.shutdown_grace", wanted.shutdown_grace.to_string(), self.shutdown_grace.to_string());
        check("log.format", format!("{:?}", wanted.log_format), format!("{:?}", self.log_format));
        check("log.level", wanted.log_level, self.log_level.clone());
        let cluster = |c: &super::cluster::ClusterSettings| serde_json::to_string(c).unwrap_or_default();
        check("cluster", cluster(&wanted.cluster), cluster(&self.cluster));
        out
    }

    /// Writes the running values into `config`, so the installed config says what is in force.
    pub fn pin(&self, config: &mut Config) {
        let s = &mut config.server;
        s.listen.clone_from(&self.listen);
        s.admin = self.admin;
        s.threads = self.threads;
        s.client_read_buffer = self.client_read_buffer;
        s.upstream_keepalive_pool = self.upstream_keepalive_pool;
        s.shutdown_grace = self.shutdown_grace;
        config.log.format = self.log_format;
        config.log.level.clone_from(&self.log_level);
        config.cluster.clone_from(&self.cluster);
    }
}

/// The parts of the config `new` changes, as dotted keys one level deep (`server.admin_token`,
/// `upstreams.api`, `classes.run`, `routes`, `maintenance`, `tenants.rate_limit`).
pub fn changed(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["(not comparable)".into()];
    };
    let mut out = Vec::new();
    diff("", &a, &b, 2, &mut out);
    // Never serialised (a secret), so compared on its own, and never printed.
    if old.server.admin_token != new.server.admin_token {
        out.push("server.admin_token".into());
        out.sort();
    }
    out
}

fn diff(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, depth: usize, out: &mut Vec<String>) {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(a), Object(b)) if depth > 0 => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let null = serde_json::Value::Null;
            for key in keys {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                diff(&path, a.get(key).unwrap_or(&null), b.get(key).unwrap_or(&null), depth - 1, out);
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, Overrides};

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"

[upstreams.api]
servers = ["127.0.0.1:5001"]

[[routes]]
prefix = "/"
upstream = "api"
"#;

    fn load(text: &str) -> Config {
        parse_str(text, "test.toml", &Overrides::default()).expect("valid config")
    }

    #[test]
    fn same_config_changes_nothing() {
        let (a, b) = (load(BASE), load(BASE));
        assert!(changed(&a, &b).is_empty());
        assert!(RestartOnly::of(&a).differences(&b).is_empty());
    }

    #[test]
    fn listen_change_needs_a_restart_and_is_pinned() {
        let running = RestartOnly::of(&load(BASE));
        let mut new = load(&BASE.replace("127.0.0.1:8080", "127.0.0.1:8081"));
        let needed = running.differences(&new);
        assert_eq!(
            needed,
            vec![RestartNeeded {
                setting: "server.listen",
                wanted: "127.0.0.1:8081".into(),
                running: "127.0.0.1:8080".into()
            }]
        );
        running.pin(&mut new);
        assert!(running.differences(&new).is_empty());
        assert_eq!(new.server.listen, vec!["127.0.0.1:8080".parse().expect("addr")]);
    }

    #[test]
    fn changes_are_named_by_section() {
        let old = load(BASE);
        let text = format!(
            "{BASE}\n[classes.run]\nqueue_timeout = \"7s\"\n\n[[routes]]\nprefix = \"/v1\"\nupstream = \"api\"\n"
        );
        let new = load(&text);
        assert_eq!(changed(&old, &new), vec!["classes.run".to_string(), "routes".to_string()]);
    }

    #[test]
    fn log_level_needs_a_restart() {
        let running = RestartOnly::of(&load(BASE));
        let new = load(&format!("{BASE}\n[log]\nlevel = \"debug\"\n"));
        let needed: Vec<_> = running.differences(&new).into_iter().map(|n| n.setting).collect();
        assert_eq!(needed, vec!["log.level"]);
    }
}
