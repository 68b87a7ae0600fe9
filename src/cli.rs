//! The command line (clap): `run` (default) and `check` over the proxy library, `ctl` (a
//! client for a running proxy's admin API, in [`dify_shaper::ctl`]), and `sim` and `demo`
//! from the tools crate ([`dify_shaper_tools`]). `main.rs` only calls [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use dify_shaper::app::App;
use dify_shaper::config::{self, Config, ConfigError, Overrides};
use dify_shaper::ctl::CtlArgs;
use dify_shaper::maintenance::actions::docker::Preview;
use dify_shaper_tools::demo::DemoArgs;
use dify_shaper_tools::sim::cli::SimArgs;

/// dify-shaper: queue, admit, retry and hold traffic in front of a self-hosted Dify.
#[derive(Debug, Parser)]
#[command(name = "dify-shaper", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `run` flags, accepted without the subcommand too.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate a config file and print the effective config.
    Check(CheckArgs),
    /// Run the Dify simulator (a test backend speaking Dify's wire format).
    Sim(SimArgs),
    /// Drain, resume or restart an upstream, or show its state, through a running proxy's admin API.
    Ctl(CtlArgs),
    /// Show what dify-shaper does: the same overload and restart of a simulated Dify, straight
    /// and through dify-shaper, side by side (about 30 s; --quick about 15 s).
    Demo(DemoArgs),
}

/// Flags of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Config file (TOML). Without it, embedded defaults: every path → upstream `api`.
    #[arg(long, short = 'c', value_name = "FILE", env = "DIFY_SHAPER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replace the client listen address(es).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Replace the servers of the upstream named `api` (e.g. `http://127.0.0.1:5001`).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Replace the admin listen address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Share limits with other replicas through this Redis (replaces `[cluster] redis`).
    #[arg(long, value_name = "URL", env = "DIFY_SHAPER_REDIS")]
    pub redis: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            admin: self.admin,
            upstream: self.upstream.clone(),
            admin_token: admin_token_from_env(),
            redis: self.redis.clone(),
        }
    }

    fn load(&self) -> Result<Config, ConfigError> {
        let overrides = self.overrides();
        match &self.config {
            Some(path) => config::load_file(path, &overrides),
            None => config::load_embedded(&overrides),
        }
    }
}

/// Flags of `check`.
#[derive(Debug, Args)]
struct CheckArgs {
    /// The config file to validate; without it (and without --config or DIFY_SHAPER_CONFIG)
    /// the embedded defaults are checked.
    file: Option<PathBuf>,
    /// The config file, as `run` takes it (the positional FILE wins when both are given).
    #[arg(long, short = 'c', value_name = "FILE", env = "DIFY_SHAPER_CONFIG")]
    config: Option<PathBuf>,
    /// Dify's route table (TSV: method, path, handler, long_running) to check the routes
    /// against; default: the built-in table of Dify 1.12.1.
    #[arg(long, value_name = "FILE")]
    dify_routes: Option<PathBuf>,
    /// The cluster's Redis, as `run` takes it (replaces `[cluster] redis`; checked by connecting).
    #[arg(long, value_name = "URL", env = "DIFY_SHAPER_REDIS")]
    redis: Option<String>,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Sim(args)) => sim(args),
        Some(Command::Ctl(args)) => dify_shaper::ctl::run(args),
        Some(Command::Demo(args)) => dify_shaper_tools::demo::run(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    // Before anything slow: from here on a SIGHUP cannot end the process.
    if let Err(e) = dify_shaper::reload::sighup::install_early() {
        eprintln!("dify-shaper: cannot install the SIGHUP handler: {e}");
        return ExitCode::FAILURE;
    }
    let config = match args.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dify-shaper: {e}");
            return ExitCode::FAILURE;
        }
    };
    dify_shaper::telemetry::init(&config.log);
    for warning in config::audit::warnings(&config, &config::audit::builtin_routes()) {
        tracing::warn!(config = %config.source, "{warning}");
    }
    let app = App::with_config_path(config, args.overrides(), args.config.clone());
    dify_shaper::server::run(app)
}

/// `DIFY_SHAPER_ADMIN_TOKEN`: the admin token when the config sets none.
fn admin_token_from_env() -> Option<String> {
    std::env::var("DIFY_SHAPER_ADMIN_TOKEN").ok()
}

fn check(args: &CheckArgs) -> ExitCode {
    let file = args.file.as_ref().or(args.config.as_ref());
    let origin = file.map_or_else(|| "embedded defaults".to_string(), |f| f.display().to_string());
    let overrides =
        Overrides { admin_token: admin_token_from_env(), redis: args.redis.clone(), ..Overrides::default() };
    let loaded = match file {
        Some(path) => config::load_file(path, &overrides),
        None => config::load_embedded(&overrides),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dify-shaper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let table = match &args.dify_routes {
        None => config::audit::builtin_routes(),
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| config::audit::parse_routes(&text))
        {
            Ok(table) => table,
            Err(e) => {
                eprintln!("dify-shaper: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
    };
    for warning in config::audit::warnings(&config, &table) {
        eprintln!("dify-shaper: {origin}: warning: {warning}");
    }
    check_docker_actions(&config, &origin);
    if let Some(url) = &config.cluster.redis {
        match dify_shaper::cluster::probe(&config.cluster, std::time::Duration::from_secs(2)) {
            Ok(version) => {
                eprintln!("dify-shaper: {origin}: cluster.redis {url}: reachable (Redis {version})")
            }
            Err(e) => {
                eprintln!("dify-shaper: {origin}: cluster.redis {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match toml::to_string_pretty(&config) {
        Ok(text) => {
            println!("# {origin}: OK. Effective config:\n{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dify-shaper: {origin}: valid, but printing it failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// For each `docker` maintenance action, asks the engine (when it answers) which containers
/// it would restart, and warns when none; an engine that cannot be reached from here is only
/// mentioned (`check` often runs on another machine than the proxy).
fn check_docker_actions(config: &Config, origin: &str) {
    let docker: Vec<_> = config
        .maintenance
        .values()
        .filter(|m| matches!(m.action, Some(dify_shaper::config::maintenance::Action::Docker { .. })))
        .collect();
    if docker.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    for spec in docker {
        let Some(action) = &spec.action else { continue };
        let target =
            dify_shaper::maintenance::actions::Target { upstream: spec.upstream.clone(), server: None };
        let upstream = &spec.upstream;
        match runtime.block_on(action.preview(&target, Duration::from_secs(5))) {
            Some(Preview::Containers(containers)) => {
                eprintln!("dify-shaper: {origin}: maintenance of {upstream}: docker restarts {}", containers.join(", "))
            }
            Some(Preview::NoMatch(e)) => eprintln!("dify-shaper: {origin}: warning: maintenance of {upstream}: {e}"),
            Some(Preview::Unknown(e)) => eprintln!(
                "dify-shaper: {origin}: maintenance of {upstream}: containers not listed here ({e}); dify-shaper lists them at start-up"
            ),
            None => {}
        }
    }
}

fn sim(args: SimArgs) -> ExitCode {
    dify_shaper::telemetry::init(&dify_shaper::config::LogSettings {
        format: dify_shaper::config::LogFormat::Text,
        level: "info".into(),
        access_log: false,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dify-shaper sim: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(args.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dify-shaper sim: {e}");
            ExitCode::FAILURE
        }
    }
}
