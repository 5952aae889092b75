//! Waiting for a condition with a limit: every wait in a test ends.

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it holds and returns how long that took; panics naming `what`
/// once `limit` has passed. For threads outside an async runtime (it sleeps).
pub fn within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}
