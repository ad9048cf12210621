//! Child processes and waiting: stopping a child (SIGTERM, then SIGKILL) and
//! polling for a condition with a deadline.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// SIGTERM to `child`, then [`wait_or_kill`].
pub fn terminate(child: &mut Child, timeout: Duration) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    wait_or_kill(child, timeout);
}

/// Waits up to `timeout` for `child` to exit; SIGKILL after that.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `f` every 20 ms until it returns `Some`, at most `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends a child process when dropped (also when the test fails).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
