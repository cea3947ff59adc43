//! Ctrl-C / SIGTERM: the first signal asks the loop to finish the step, checkpoint and exit
//! 130; a second one exits at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    if COUNT.fetch_add(1, Ordering::SeqCst) >= 1 {
        // Second signal: leave now (async-signal-safe).
        unsafe { libc::_exit(130) };
    }
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handlers (idempotent).
pub fn install() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    #[cfg(unix)]
    // SAFETY: the handler only touches atomics and calls the async-signal-safe `_exit`.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks the loop to stop as a first signal would (used by tests and embedding programs).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}
