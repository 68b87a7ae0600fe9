//! The words around the numbers: what the demo is about to do (from the [`Scenario`]) and
//! where to go next.

use std::fmt::Write as _;

use super::report::seconds;
use super::scenario::Scenario;
use crate::sim::ServiceTime;

/// What is about to happen, in a few lines.
pub fn intro(scenario: &Scenario) -> String {
    let b = &scenario.backend;
    let capacity = scenario.capacity_per_sec();
    let mut out = String::from("dify-shaper demo\n\n");
    let _ = writeln!(
        out,
        "  backend  a simulated Dify API: 1 gunicorn worker with {} connections, PostgreSQL limit {},\n           \
         runs of {} — it completes about {capacity:.0} runs/s",
        b.worker_connections,
        b.db_connections.map_or_else(|| "none".to_string(), |n| n.to_string()),
        run_time(b.service_time),
    );
    let _ = writeln!(
        out,
        "  load     {:.1} requests/s for {} ({:.1}× what it can serve), {} requests; each client\n           \
         gives up after {}",
        scenario.rate,
        seconds(scenario.duration),
        scenario.rate / capacity,
        scenario.requests(),
        seconds(scenario.patience),
    );
    match scenario.restart {
        Some(r) => {
            let _ = writeln!(
                out,
                "  restart  at {}, like `docker restart api`: in-flight runs finish, then {} of boot",
                seconds(r.at),
                seconds(r.boot)
            );
        }
        None => out.push_str("  restart  none (--no-restart)\n"),
    }
    out.push_str(
        "\nTwo identical backends, loaded side by side at the same moments: one taken straight,\n\
         one behind dify-shaper with its embedded defaults (it is told nothing about capacity).\n",
    );
    out
}

/// A run-time distribution for people: `0.8–1.2 s` rather than the simulator's syntax.
fn run_time(service: ServiceTime) -> String {
    match service {
        ServiceTime::Fixed(d) => seconds(d),
        ServiceTime::Uniform { min, max } => {
            format!("{:.1}–{:.1} s", min.as_secs_f64(), max.as_secs_f64())
        }
        other => other.to_string(),
    }
}

/// Where to read on.
pub fn next_steps() -> &'static str {
    "Next:\n  \
     README.md, Quick start                put dify-shaper in front of your Dify (`dify-shaper run --upstream …`)\n  \
     README.md, How admission works        the learned limit and the fair queue behind these numbers\n  \
     README.md, Measured                   the same effects measured in longer runs\n  \
     dify-shaper demo --help               change the load (--rate, --duration, --no-restart, --quick)\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scenario::DemoArgs;

    #[test]
    fn the_intro_describes_the_scenario_it_was_given() {
        let args = DemoArgs { duration: None, rate: Some(6.0), no_restart: true, quick: false };
        let text = intro(&Scenario::from_args(&args).expect("valid"));
        assert!(text.contains("6.0 requests/s for 20 s (1.5×"), "{text}");
        assert!(text.contains("120 requests"), "{text}");
        assert!(text.contains("PostgreSQL limit 4"), "{text}");
        assert!(text.contains("runs of 0.8–1.2 s"), "{text}");
        assert!(text.contains("none (--no-restart)"), "{text}");
        let text =
            intro(&Scenario::from_args(&DemoArgs { rate: None, no_restart: false, ..args }).expect("valid"));
        assert!(text.contains("at 8 s"), "{text}");
    }
}
