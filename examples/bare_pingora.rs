//! The smallest pingora 0.9 reverse proxy: one upstream, no hooks but `upstream_peer`, pingora's
//! default settings (its keep-alive pool included) and one worker thread. `benches/overhead.sh`
//! runs it beside dify-shaper, nginx and HAProxy as the *framework floor*: what any proxy built
//! on pingora costs per request before it does anything of its own. The gap between this row
//! and dify-shaper's is ours; the gap between this row and HAProxy's is pingora's.
//!
//! It allocates with mimalloc, like dify-shaper, so the allocator is not part of either gap.
//! `--no-work-stealing` swaps pingora's default work-stealing runtime for one single-threaded
//! event loop per thread, the runtime dify-shaper runs on: the two rows split the framework's
//! cost into its scheduler's share and its per-request work.
//!
//! ```text
//! cargo run --release --example bare_pingora -- 127.0.0.1:8081 127.0.0.1:5001 [--no-work-stealing]
//! ```

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line, for both ways of getting it wrong.
const USAGE: &str = "usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR [--no-work-stealing]";

/// Forwards every request to one address over plain HTTP/1.1.
struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let work_stealing = match args.next().as_deref() {
        None => true,
        Some("--no-work-stealing") => false,
        Some(other) => {
            eprintln!("unknown argument {other}; {USAGE}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf { work_stealing, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Bare { upstream });
    service.add_tcp(&listen);
    service.threads = Some(1);
    server.add_service(service);
    server.run_forever();
}
