//! Gives memory back to the operating system after a burst of connections.
//!
//! glibc's allocator keeps memory that was freed in its arenas: after a storm of thousands
//! of connections the proxy's RSS stayed at its peak (hundreds of MB) for the life of the
//! process, although all of it was free. Every few seconds this task compares the
//! connections open now with the most that were open since the last look (noted at each
//! accept, so a burst between two looks counts); when many have closed, it asks glibc to return
//! its free pages (`malloc_trim`). That costs a few milliseconds, only after load drops, and
//! never on the request path. Other C libraries (musl) return memory on their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Most connections open at once since the last look (a burst shorter than [`CHECK`] would
/// be missed by looking only every few seconds).
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Called by the accept loops with the number of connections now open.
pub fn note_open(open: usize) {
    PEAK.fetch_max(open, Ordering::Relaxed);
}

/// How often the connection count is looked at.
const CHECK: Duration = Duration::from_secs(5);

/// Connections that must have gone away since the last trim (or start) before trimming.
const DROP: usize = 256;

/// Runs until the process ends; `open` returns the number of open connections.
pub async fn trim_after_load(open: impl Fn() -> usize) {
    let mut high = open();
    loop {
        tokio::time::sleep(CHECK).await;
        let now = open();
        high = high.max(now).max(PEAK.swap(now, Ordering::Relaxed));
        if high - now >= DROP {
            let before = std::time::Instant::now();
            release_free_memory();
            tracing::debug!(
                connections_then = high,
                connections_now = now,
                took = ?before.elapsed(),
                "returned free memory to the OS"
            );
            high = now;
        }
    }
}

/// Returns free heap pages to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns free heap pages to the OS (nothing to do outside glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
