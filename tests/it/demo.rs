//! `dify-shaper demo --quick` runs end to end — simulators, dify-shaper as a
//! child process, the load side by side — prints the table, and cleans up its child on exit
//! and on Ctrl-C.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// The demo as a child process, its output in files (no pipe to fill up).
fn spawn_demo(dir: &Path, args: &[&str]) -> Child {
    let stdout = std::fs::File::create(dir.join("stdout")).expect("stdout file");
    let stderr = std::fs::File::create(dir.join("stderr")).expect("stderr file");
    Command::new(env!("CARGO_BIN_EXE_dify-shaper"))
        .arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn the demo")
}

fn output(dir: &Path) -> (String, String) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    (read("stdout"), read("stderr"))
}

/// Waits for the process for at most `limit`; kills it (and fails) past that.
fn wait_bounded(child: &mut Child, limit: Duration, dir: &Path) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = output(dir);
            panic!("the demo did not end within {limit:?}\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The proxy's pid, from the line `… through dify-shaper http://ADDR (pid N)`.
fn proxy_pid(stdout: &str) -> Option<i32> {
    let after = stdout.split("(pid ").nth(1)?;
    after.split(')').next()?.trim().parse().ok()
}

fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The two integers of a table row (direct, shaped), e.g. `errors   92 (58%)   52 (33%)`.
fn row(stdout: &str, label: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{stdout}"));
    let numbers: Vec<usize> = line[label.len()..].split_whitespace().filter_map(|t| t.parse().ok()).collect();
    assert!(numbers.len() >= 2, "row {line:?}");
    (numbers[0], numbers[1])
}

#[test]
fn quick_demo_prints_the_table_and_dify_shaper_fails_no_more_requests() {
    let _machine = crate::common::exclusive_blocking();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut demo = spawn_demo(dir.path(), &["--quick"]);
    let status = wait_bounded(&mut demo, Duration::from_secs(90), dir.path());
    let (stdout, stderr) = output(dir.path());
    eprintln!("{stdout}");
    assert!(status.success(), "exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");

    for needle in ["direct", "through dify-shaper", "goodput (ok/s)", "p99", "Next:", "How admission works"] {
        assert!(stdout.contains(needle), "{needle:?} missing from\n{stdout}");
    }
    let (sent_direct, sent_shaped) = row(&stdout, "requests sent");
    assert_eq!(sent_direct, sent_shaped, "both sides get the same load");
    assert!(sent_direct > 0);
    let (errors_direct, errors_shaped) = row(&stdout, "errors");
    // Two shared cores make timings noisy: a fifth of the requests is the margin.
    assert!(
        errors_shaped <= errors_direct + sent_direct / 5,
        "through dify-shaper {errors_shaped} errors, direct {errors_direct}\n{stdout}"
    );
    let pid = proxy_pid(&stdout).expect("the proxy's pid is printed");
    assert!(!process_exists(pid), "dify-shaper (pid {pid}) outlived the demo");
}

#[test]
fn ctrl_c_stops_the_demo_and_its_child() {
    let _machine = crate::common::exclusive_blocking();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut demo = spawn_demo(dir.path(), &["--quick"]);
    // Once the proxy's pid is printed the load is about to start.
    let deadline = Instant::now() + Duration::from_secs(45);
    let pid = loop {
        if let Some(pid) = proxy_pid(&output(dir.path()).0) {
            break pid;
        }
        if demo.try_wait().expect("try_wait").is_some() || Instant::now() >= deadline {
            let _ = demo.kill();
            panic!("the demo never started its proxy: {:?}", output(dir.path()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(process_exists(pid));
    std::thread::sleep(Duration::from_secs(1));
    // Only the demo gets the signal (a terminal's Ctrl-C would reach the child too).
    let demo_pid = nix::unistd::Pid::from_raw(i32::try_from(demo.id()).expect("pid"));
    nix::sys::signal::kill(demo_pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = wait_bounded(&mut demo, Duration::from_secs(10), dir.path());
    assert_eq!(status.code(), Some(130), "{:?}", output(dir.path()));
    assert!(!process_exists(pid), "dify-shaper (pid {pid}) outlived an interrupted demo");
    assert!(output(dir.path()).1.contains("interrupted"));
}
