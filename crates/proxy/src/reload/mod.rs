//! Config reload: one function, [`reload`], behind both triggers — SIGHUP ([`sighup`]) and
//! `POST /reload` on the admin API — so they cannot behave differently.
//!
//! A reload reads the file the process was started with (or re-validates the embedded
//! defaults), with the same command-line overrides. It is all-or-nothing: an invalid file
//! changes nothing and is logged (`FILE:LINE:COL: key: …`) and counted. A valid one is
//! installed whole with one atomic swap ([`App::install`]): requests in flight keep the
//! snapshot they started with, and the state keyed by upstream name — learned limits,
//! queues, health, maintenance — carries over for upstreams that stay. Settings that only a
//! restart applies ([`RestartOnly`](crate::config::changes::RestartOnly)) keep their running
//! values and are named in the log.

pub mod history;
pub mod outcome;
pub mod sighup;

use crate::app::App;
use crate::config::changes::changed;
use crate::config::{load_embedded, load_file};

pub use history::{ReloadLog, ReloadRecord, ReloadSummary};
pub use outcome::ReloadOutcome;

/// Reloads the config of `app`; `trigger` (`sighup`, `admin`) is logged and recorded.
pub fn reload(app: &App, trigger: &str) -> ReloadOutcome {
    let mut record = app.reload_log().lock();
    let loaded = match app.config_path() {
        Some(path) => load_file(path, &app.overrides),
        None => load_embedded(&app.overrides),
    };
    let outcome = match loaded {
        Err(e) => {
            tracing::error!(trigger, error = %e, "config reload refused; the running config stays");
            ReloadOutcome::Failed { error: e.to_string() }
        }
        Ok(mut config) => {
            let running = app.restart_only();
            let restart_needed = running.differences(&config);
            for n in &restart_needed {
                tracing::warn!(
                    trigger,
                    setting = n.setting,
                    wanted = %n.wanted,
                    "config reload: {} needs a restart, still using {}",
                    n.setting,
                    n.running
                );
            }
            running.pin(&mut config);
            let changed = changed(&app.config(), &config);
            let source = config.source.clone();
            app.install(config);
            tracing::info!(trigger, config = %source, ?changed, "config reloaded");
            ReloadOutcome::Ok { config: source, restart_needed, changed }
        }
    };
    record.record(trigger, &outcome);
    outcome
}
