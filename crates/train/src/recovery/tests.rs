//! Tests of the recovery boundary on the CPU backend. The panic ring is process-wide, so every
//! test of this crate that records panics or runs an attempt (training included) takes
//! [`serial`].

use super::*;
use burn::backend::Flex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

type B = Flex;

/// Tests that share the process-wide panic ring run one at a time.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// As cubecl's device runner does: an allocation panics on another thread, which catches it.
fn oom_on_another_thread(size: u64) {
    std::thread::Builder::new()
        .name("device-runner-test".into())
        .spawn(move || {
            let _ = std::panic::catch_unwind(|| {
                panic!("called `Result::unwrap()` on an `Err` value: can't allocate buffer of size: {size}");
            });
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn check_other_threads_surfaces_an_oom_recorded_elsewhere_at_once() {
    let _serial = serial();
    let reached = AtomicBool::new(false);
    let r = attempt_scoped::<B, _>(&Default::default(), |scope| {
        scope.check_other_threads();
        oom_on_another_thread(1_234_567);
        scope.check_other_threads();
        reached.store(true, Ordering::SeqCst);
        7
    });
    match r {
        Err(Failure::Oom { message }) => {
            assert!(message.contains("1234567") && message.contains("on thread 'device-runner-test'"), "{message}")
        }
        other => panic!("expected an out-of-memory, got {other:?}"),
    }
    assert!(!reached.load(Ordering::SeqCst), "the attempt must stop at the check");
}

#[test]
fn check_other_threads_ignores_what_happened_before_the_attempt_and_other_panics() {
    let _serial = serial();
    oom_on_another_thread(7_654_321);
    let r = attempt_scoped::<B, _>(&Default::default(), |scope| {
        std::thread::spawn(|| {
            let _ = std::panic::catch_unwind(|| panic!("index out of bounds: the len is 3 but the index is 7"));
        })
        .join()
        .unwrap();
        scope.check_other_threads();
        1
    });
    assert!(matches!(r, Ok(1)), "{r:?}");
}

#[test]
fn an_unscoped_attempt_still_sees_other_threads_when_it_ends() {
    let _serial = serial();
    let r = attempt::<B, _>(&Default::default(), || {
        oom_on_another_thread(42);
        "done"
    });
    assert!(matches!(&r, Err(Failure::Oom { message }) if message.contains("size: 42")), "{r:?}");
    // A non-OOM panic of the attempt itself is what it is.
    let r = attempt::<B, ()>(&Default::default(), || panic!("simulated model bug"));
    assert!(matches!(&r, Err(Failure::Other { message }) if message == "simulated model bug"), "{r:?}");
}

#[test]
fn quietly_returns_the_first_panic_recorded_anywhere() {
    let _serial = serial();
    assert_eq!(quietly(|| 3), Ok(3));
    let r = quietly(|| {
        let runner = std::thread::Builder::new()
            .name("runner".into())
            .spawn(|| panic!("libcuda.so: cannot open shared object file"))
            .unwrap();
        // The calling thread sees only the echo.
        if runner.join().is_err() {
            panic!("RecvError");
        }
    });
    assert_eq!(r, Err("libcuda.so: cannot open shared object file".to_string()));
    // The guard is gone: the hook passes panics on again (the flag is back to zero).
    assert_eq!(panics::quiet_guards(), 0);
}

#[test]
fn the_probe_computes_on_a_working_backend() {
    let _serial = serial();
    let device = Default::default();
    cleanup::<B>(&device);
    assert!(probe::<B>(&device));
}

/// Tidy check for this module's invariant: no other file of the crate asks the classifier or
/// touches the process-wide panic hook.
#[test]
fn the_boundary_is_the_only_caller_of_the_classifier() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = ["classify(", "is_oom(", "oom_since(", "set_hook(", "take_hook(", "panics::"];
    let mut offenders = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path != src.join("recovery") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    if forbidden.iter().any(|f| code.contains(f)) {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only src/recovery may classify failures or touch panic hooks:\n{}",
        offenders.join("\n")
    );
}
