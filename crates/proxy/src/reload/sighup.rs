//! SIGHUP → [`super::reload`], as a pingora background service. pingora 0.9 itself handles
//! only SIGTERM, SIGQUIT and SIGINT (`pingora-core` `UnixShutdownSignalWatch`), so SIGHUP is
//! ours; its default action would end the process.
//!
//! The handler is installed twice on purpose: [`install_early`] runs before the config is
//! even loaded, so a SIGHUP that arrives while the server is still starting is absorbed
//! instead of killing the process (such a reload request is dropped: the config being
//! started is at least as new as the signal). The service then listens for later ones.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::app::App;

/// Replaces SIGHUP's default action (terminate) with tokio's handler, which stays installed
/// for the life of the process. Call first thing in `run`.
pub fn install_early() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let _context = runtime.enter();
    signal(SignalKind::hangup()).map(drop)
}

/// The background service reloading the config on SIGHUP.
pub struct SighupReloader {
    app: Arc<App>,
}

impl SighupReloader {
    /// A reloader for `app`.
    pub fn new(app: Arc<App>) -> Self {
        SighupReloader { app }
    }
}

#[async_trait]
impl BackgroundService for SighupReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /reload instead");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP received: reloading the config");
                    // The outcome is logged and recorded by `reload` itself.
                    drop(super::reload(&self.app, "sighup"));
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
