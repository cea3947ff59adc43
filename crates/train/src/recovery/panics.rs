//! A process-wide panic recorder: the recovery boundary's eyes on other threads.
//!
//! A device allocation in burn 0.21 / cubecl 0.10 fails on the device's *runner* thread,
//! which catches the panic and only logs it; the training thread may never see a panic of
//! its own. So the boundary cannot rely on `catch_unwind` alone: it takes [`generation()`]
//! before an attempt, runs it, and looks at [`since(generation)`](since) for out-of-memory
//! messages raised on *any* thread during the attempt ([`oom_since`]).
//!
//! [`install()`] sets a panic hook (once per process) that records every panic's thread,
//! message and location in a bounded ring (the `CAPACITY` most recent records), then chains to
//! the hook that was installed before it. With [`install_quiet_oom()`] the chained hook is
//! skipped for panics that [`oomph_sched::classify`] calls out-of-memory (including simulated
//! ones): those are recovered, and printing a backtrace for each would only alarm. While a
//! [`quiet()`] guard lives, the chained hook is skipped for every panic (a start-up check that
//! reports the cause itself). Skipped panics are still logged through `tracing` at debug level.
//!
//! This is the process's only global panic state; the recovery boundary ([`super`]) is the one
//! user of it, and `oomph_sched` holds none.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

/// How many of the most recent panics are kept.
const CAPACITY: usize = 64;

/// One recorded panic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PanicRecord {
    /// The panicking thread's name, or `ThreadId(..)` for an unnamed thread.
    pub thread: String,
    /// The panic message (see [`panic_message`]).
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
    /// The rank whose training thread panicked ([`crate::gang::set_thread_rank`]); `None` on
    /// any other thread (a device runner, a backend's pool), which every rank's boundary looks
    /// at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
}

struct Ring {
    /// Sequence number the next record gets (= number of panics recorded so far).
    next: u64,
    /// `(sequence, record)`, oldest first, at most `CAPACITY`.
    records: VecDeque<(u64, PanicRecord)>,
}

static RING: Mutex<Ring> = Mutex::new(Ring { next: 0, records: VecDeque::new() });
static INSTALL: Once = Once::new();
static QUIET_OOM: AtomicBool = AtomicBool::new(false);
/// Live [`Quiet`] guards: while above zero, no panic reaches the chained hook.
static QUIET_ALL: AtomicUsize = AtomicUsize::new(0);

fn ring() -> MutexGuard<'static, Ring> {
    // The lock is never held across a panic, but be robust anyway.
    RING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Installs the recording panic hook. Idempotent: only the first call installs it; the hook
/// chains to whatever hook was installed before that first call.
pub fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = match info.payload_as_str() {
                Some(s) => s.to_string(),
                None => panic_message(info.payload()),
            };
            let thread = std::thread::current();
            let record = PanicRecord {
                thread: match thread.name() {
                    Some(name) => name.to_string(),
                    None => format!("{:?}", thread.id()),
                },
                message,
                location: info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
                rank: crate::gang::thread_rank(),
            };
            let quiet_oom = QUIET_OOM.load(Ordering::Relaxed) && oomph_sched::is_oom(&record.message);
            // A data fault is reported by the boundary as an error of its own.
            let data = info.payload().is::<super::DataFault>();
            let quiet = quiet_oom || data || QUIET_ALL.load(Ordering::SeqCst) > 0;
            if quiet_oom {
                tracing::debug!(
                    thread = %record.thread,
                    location = record.location.as_deref().unwrap_or("?"),
                    "recoverable out-of-memory panic: {}",
                    first_line(&record.message)
                );
            }
            record_panic(record);
            if !quiet {
                previous(info);
            }
        }));
    });
}

/// [`install()`], and silence the chained hook for out-of-memory (and simulated) panics from
/// now on. Other panics are always passed on.
pub fn install_quiet_oom() {
    install();
    QUIET_OOM.store(true, Ordering::Relaxed);
}

/// Keeps every panic away from the chained hook (recorded, not printed) while it lives.
#[must_use = "panics are quiet only while the guard lives"]
pub struct Quiet(());

impl Drop for Quiet {
    fn drop(&mut self) {
        QUIET_ALL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// [`install()`], and keep every panic, on any thread, from printing until the returned guard
/// is dropped. For a check that reports the cause itself (see [`super::quietly`]).
pub fn quiet() -> Quiet {
    install();
    QUIET_ALL.fetch_add(1, Ordering::SeqCst);
    Quiet(())
}

/// Live [`Quiet`] guards.
#[cfg(test)]
pub(crate) fn quiet_guards() -> usize {
    QUIET_ALL.load(Ordering::SeqCst)
}

/// Records a panic in the ring (what the hook does with each one).
fn record_panic(record: PanicRecord) {
    let mut ring = ring();
    let seq = ring.next;
    ring.next += 1;
    if ring.records.len() == CAPACITY {
        ring.records.pop_front();
    }
    ring.records.push_back((seq, record));
}

/// The current generation: the number of panics recorded so far in this process.
/// Take it before an attempt and pass it to [`since`] afterwards.
pub fn generation() -> u64 {
    ring().next
}

/// The panics recorded since `generation` was taken, oldest first, from every thread.
/// If more than `CAPACITY` (64) panics happened since, only the most recent are returned.
pub fn since(generation: u64) -> Vec<PanicRecord> {
    ring().records.iter().filter(|(seq, _)| *seq >= generation).map(|(_, r)| r.clone()).collect()
}

/// The first out-of-memory panic recorded since `generation` that concerns the calling
/// thread: on a rank's training thread, none that another rank's training thread raised
/// (that rank recovers from its own, and the ranks agree on it), but those of threads that
/// belong to no rank (a device runner); on a thread of no rank, every one.
pub fn oom_since(generation: u64) -> Option<PanicRecord> {
    let mine = crate::gang::thread_rank();
    let concerns = |r: &PanicRecord| mine.is_none() || r.rank.is_none() || r.rank == mine;
    since(generation).into_iter().find(|r| concerns(r) && oomph_sched::is_oom(&r.message))
}

/// Turns a panic payload (from `catch_unwind` or a hook) into text: the `&str` or `String`
/// it carries, a boxed error's `Display`, or a placeholder for other types.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(super::DataFault(s)) = payload.downcast_ref::<super::DataFault>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(e) = payload.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>() {
        e.to_string()
    } else if let Some(e) = payload.downcast_ref::<Box<dyn std::error::Error + Send>>() {
        e.to_string()
    } else {
        "<panic payload of a non-string type>".to_string()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::tests::serial;
    use oomph_sched::{classify, OomKind};

    #[test]
    fn records_a_cubecl_oom_raised_on_another_thread() {
        let _serial = serial();
        install_quiet_oom();
        let g = generation();
        // The text cubecl-cuda's runner thread panics with: compute/server.rs
        // `command.reserve(size).unwrap()` on IoError::BufferTooBig.
        let unique = "can't allocate buffer of size: 123456789\nNo backtrace available";
        let handle = std::thread::Builder::new()
            .name("device-runner-test".into())
            .spawn(move || {
                let r: Result<(), String> = std::hint::black_box(Err(unique.to_string()));
                r.unwrap();
            })
            .unwrap();
        assert!(handle.join().is_err());
        let seen = since(g);
        let rec = seen.iter().find(|r| r.message.contains("123456789")).expect("the runner-thread panic is recorded");
        assert_eq!(rec.thread, "device-runner-test");
        assert!(rec.location.as_deref().unwrap_or("").contains("panics.rs"));
        assert_eq!(classify(&rec.message), Some(OomKind::DeviceAlloc));
        assert!(oom_since(g).is_some());
    }

    #[test]
    fn an_oom_on_one_ranks_thread_is_not_taken_for_another_ranks() {
        let _serial = serial();
        install_quiet_oom();
        let oom_on = |name: &str, rank: Option<usize>, size: u64| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    crate::gang::set_thread_rank(rank);
                    let r: Result<(), String> =
                        std::hint::black_box(Err(format!("can't allocate buffer of size: {size}")));
                    r.unwrap();
                })
                .unwrap()
                .join()
                .unwrap_err();
        };
        // (The messages below avoid the words of an out-of-memory: the quiet hook would hide them.)
        let seen = |g| oom_since(g).map(|r| (r.thread, r.rank));
        crate::gang::set_thread_rank(Some(0));
        let g = generation();
        oom_on("oomph-rank-1", Some(1), 111);
        assert_eq!(seen(g), None, "rank 1's own is not rank 0's");
        oom_on("device-runner-test", None, 222);
        assert_eq!(seen(g), Some(("device-runner-test".into(), None)), "a device runner's concerns every rank");
        crate::gang::set_thread_rank(None);
        assert_eq!(seen(g), Some(("oomph-rank-1".into(), Some(1))), "a thread of no rank sees every one");
    }

    #[test]
    fn non_oom_panics_are_recorded_and_not_classified() {
        let _serial = serial();
        install();
        let g = generation();
        let r = std::panic::catch_unwind(|| {
            let v: Vec<u8> = Vec::new();
            let i = std::hint::black_box(3usize);
            v[i]
        });
        let payload = r.unwrap_err();
        let msg = panic_message(payload.as_ref());
        assert!(msg.contains("index out of bounds"), "{msg}");
        assert!(since(g).iter().any(|r| r.message == msg));
        assert_eq!(classify(&msg), None);
    }

    #[test]
    fn ring_is_bounded() {
        let _serial = serial();
        let g = generation();
        for i in 0..(CAPACITY + 10) {
            record_panic(PanicRecord {
                thread: "t".into(),
                message: format!("synthetic {i}"),
                location: None,
                rank: None,
            });
        }
        let all = since(0);
        assert!(all.len() <= CAPACITY);
        let mine = since(g);
        assert!(mine.len() <= CAPACITY);
        assert!(mine.iter().any(|r| r.message == format!("synthetic {}", CAPACITY + 9)));
        assert!(generation() >= g + CAPACITY as u64 + 10);
    }

    #[test]
    fn payload_text() {
        let p: Box<dyn Any + Send> = Box::new("static str");
        assert_eq!(panic_message(p.as_ref()), "static str");
        let p: Box<dyn Any + Send> = Box::new(String::from("owned"));
        assert_eq!(panic_message(p.as_ref()), "owned");
        let p: Box<dyn Any + Send> = Box::new(42u32);
        assert_eq!(panic_message(p.as_ref()), "<panic payload of a non-string type>");
    }
}
