//! `dify-shaper demo`: the first thing to run. Two identical simulated Dify backends (one
//! gunicorn worker, a PostgreSQL connection limit, a restart a few seconds in) get the same
//! open-loop overload at the same moments — one straight, one through dify-shaper started as a
//! child process with its embedded defaults — and the demo prints what clients saw each way,
//! side by side, with a verdict computed from the numbers.
//!
//! Side by side rather than one after the other: both backends see the same arrivals and the
//! same restart instant, and the demo takes half the time. The load is a few requests per
//! second, so sharing the machine does not skew either side.
//!
//! Files: `scenario` (flags and what they mean), `proxy` (the child dify-shaper), `load` (the
//! load and how its answers are judged), `stats` (outcomes and their summary), `progress`
//! (the live line), `report` (the table), `verdict` (the paragraph), `story` (intro and next
//! steps).

mod load;
mod progress;
mod proxy;
pub mod report;
pub mod scenario;
pub mod stats;
mod story;
pub mod verdict;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::load::{Live, Plan};
use self::progress::Progress;
use self::proxy::ProxyChild;
use self::report::Column;
pub use self::scenario::{DemoArgs, Scenario};
use self::stats::{Observation, Summary};
use crate::sim::Simulator;

/// Exit status after an interrupting signal (128 + SIGINT), as shells expect.
const EXIT_INTERRUPTED: u8 = 130;
/// How long runs still going when the load ends may take to finish, so that work done for
/// clients who left is counted (runs last at most 1.2 s).
const SETTLE: Duration = Duration::from_secs(2);
/// A head start for both generators, so neither starts behind schedule.
const LEAD: Duration = Duration::from_millis(100);

/// Runs the demo; the exit status is 0 when it completed.
pub fn run(args: DemoArgs) -> ExitCode {
    let scenario = match Scenario::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dify-shaper demo: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dify-shaper demo: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            // Signals first, so their handlers are in place before the child is spawned.
            biased;
            signal = interrupted() => Err(Stop::Signal(signal)),
            r = demo(&scenario) => r.map_err(Stop::Failed),
        }
    });
    // Dropping the demo above killed the child and stopped the simulators; this ends the
    // generator's tasks still waiting for answers.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Signal(name)) => {
            eprintln!("\ndify-shaper demo: {name}; stopped dify-shaper and the simulators");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(Stop::Failed(e)) => {
            eprintln!("dify-shaper demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the demo ended early.
enum Stop {
    Signal(&'static str),
    Failed(String),
}

/// The whole demo. Everything it starts is owned here, so dropping it (on a signal) cleans up.
async fn demo(scenario: &Scenario) -> Result<(), String> {
    let began = Instant::now();
    let any_port = ([127, 0, 0, 1], 0).into();
    let start_sim = || Simulator::start(any_port, scenario.backend.clone());
    let direct = start_sim().await.map_err(|e| format!("cannot start a simulator: {e}"))?;
    let backend = start_sim().await.map_err(|e| format!("cannot start a simulator: {e}"))?;
    let proxy = ProxyChild::start(backend.addr()).await?;
    println!("{}", story::intro(scenario));
    println!(
        "  direct   http://{}    through dify-shaper http://{} (pid {})\n",
        direct.addr(),
        proxy.addr,
        proxy.pid()
    );

    let start = Instant::now() + LEAD;
    let plan = Plan { rate: scenario.rate, count: scenario.requests(), patience: scenario.patience };
    let (direct_live, shaped_live) = (Arc::new(Live::default()), Arc::new(Live::default()));
    let done = CancellationToken::new();
    // However the demo ends, the progress line stops with it.
    let _stop_progress = done.clone().drop_guard();
    let progress = tokio::spawn(
        Progress {
            start,
            longest: scenario.longest(),
            total: plan.count,
            direct: Arc::clone(&direct_live),
            shaped: Arc::clone(&shaped_live),
            backend: backend.clone(),
        }
        .run(done.clone()),
    );
    let (direct_outcomes, shaped_outcomes, ()) = tokio::join!(
        load::run(direct.addr(), plan, start, direct_live),
        load::run(proxy.addr, plan, start, shaped_live),
        restart_both(scenario, start, &direct, &backend),
    );
    done.cancel();
    let _ = progress.await;

    settle(&[&direct, &backend]).await;
    let direct_column = column(&direct_outcomes, &direct);
    let shaped_column = column(&shaped_outcomes, &backend);
    drop(proxy);
    direct.stop().await;
    backend.stop().await;

    println!();
    print!("{}", report::table(&direct_column, &shaped_column, scenario.patience));
    println!();
    println!("{}", verdict::verdict(scenario, &direct_column, &shaped_column));
    println!();
    print!("{}", story::next_steps());
    println!("\n(demo took {:.1} s)", began.elapsed().as_secs_f64());
    Ok(())
}

/// Restarts both backends at the scenario's moment, at once, the way `docker restart` does.
async fn restart_both(scenario: &Scenario, start: Instant, direct: &Simulator, backend: &Simulator) {
    let Some(restart) = scenario.restart else { return };
    tokio::time::sleep_until(start + restart.at).await;
    tokio::join!(
        direct.restart_graceful(restart.grace, restart.boot),
        backend.restart_graceful(restart.grace, restart.boot),
    );
}

/// Waits (bounded) for the backends' last runs, so runs for departed clients are counted.
async fn settle(sims: &[&Simulator]) {
    let deadline = Instant::now() + SETTLE;
    while sims.iter().any(|s| s.stats().active > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn column(outcomes: &[Observation], sim: &Simulator) -> Column {
    let stats = sim.stats();
    Column {
        summary: Summary::of(outcomes),
        backend_runs: stats.runs_by_path.values().sum(),
        wasted_runs: stats.abandoned,
    }
}

/// Resolves with the signal's name on Ctrl-C, SIGTERM or SIGHUP.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "terminated",
                _ = hup.recv() => "hung up",
            };
        }
    }
    // Without handlers for the others, Ctrl-C still cleans up.
    match tokio::signal::ctrl_c().await {
        Ok(()) => "interrupted",
        Err(_) => std::future::pending().await,
    }
}
