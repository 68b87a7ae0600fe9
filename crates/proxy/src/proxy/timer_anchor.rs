//! Keeps tokio's timer driver from being woken through the kernel every time pingora arms a
//! long timeout on a request.
//!
//! pingora arms timeouts longer than its threshold (15 minutes) as tokio timers, and Dify's
//! read timeout is an hour: each request waiting for its answer registers one. tokio wakes its
//! driver (a write to an eventfd, and one more trip through `epoll_wait`) whenever a timer is
//! registered that expires before the driver's planned wake-up — and a driver that parked with
//! no timer at all plans none, so every registration until its next park pays that system
//! call. Against a fast backend the event loop often parks with nothing waiting (every
//! request answered): at 50 connections, one request in eight to ten paid it.
//!
//! An anchor timer on each worker thread, always due before any such timeout, gives the
//! driver a planned wake-up at every park, so registering a later timer needs no wake-up. It
//! fires once per period and re-arms: nothing else.

use std::cell::Cell;
use std::time::Duration;

thread_local! {
    static ANCHORED: Cell<bool> = const { Cell::new(false) };
}

/// The anchor's period: half pingora's threshold (every timeout it arms as a tokio timer is
/// longer than that), and ten minutes when it arms none.
fn period() -> Duration {
    pingora::prelude::fast_timeout::fast_timeout_to_tokio_threshold()
        .map_or(Duration::from_secs(600), |threshold| (threshold / 2).max(Duration::from_secs(1)))
}

/// Starts the anchor on the calling thread's runtime, once per thread (after that, a
/// thread-local check). Called from the proxy's worker threads, one event loop each.
pub fn anchor_timers() {
    ANCHORED.with(|anchored| {
        if anchored.get() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let period = period();
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                }
            });
            anchored.set(true);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchor_is_due_before_any_timeout_pingora_arms_as_a_tokio_timer() {
        let threshold = pingora::prelude::fast_timeout::fast_timeout_to_tokio_threshold();
        assert!(threshold.is_none_or(|t| period() < t), "{:?} vs {threshold:?}", period());
    }

    #[test]
    fn one_anchor_per_thread_and_none_outside_a_runtime() {
        std::thread::spawn(|| {
            anchor_timers();
            assert!(!ANCHORED.with(Cell::get), "no runtime, no anchor");
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                anchor_timers();
                anchor_timers();
                assert!(ANCHORED.with(Cell::get));
                assert_eq!(tokio::runtime::Handle::current().metrics().num_alive_tasks(), 1);
            });
        })
        .join()
        .expect("thread");
    }
}
