//! The serialisable state: re-normalisation on resume and the JSON forms of state and events.

use super::*;

#[test]
fn from_state_renormalises() {
    let mut p = Policy::new(cfg(64, 1, 64, None, 3, 8));
    let mut log = Vec::new();
    for _ in 0..50 {
        run_step(&mut p, 12, &mut log).result.unwrap();
    }
    let state = p.state().clone();
    // Same config: same policy.
    let q = Policy::from_state(p.config().clone(), state.clone());
    assert_eq!(q.state(), p.state());
    // Smaller max: limit clamped.
    let q = Policy::from_state(cfg(64, 1, 8, None, 3, 8), state.clone());
    assert_eq!(q.limit(), 8);
    check_invariants(&q);
    // Larger min: limit raised to an achievable size >= min.
    let q = Policy::from_state(cfg(64, 12, 64, None, 3, 8), state.clone());
    assert_eq!(q.limit(), 13);
    check_invariants(&q);
    // A different effective batch: sizes re-rounded for the new N.
    let q = Policy::from_state(cfg(100, 1, 100, None, 3, 8), state.clone());
    check_invariants(&q);
    assert!(q.limit() <= 11);
    // Garbage state.
    let garbage =
        PolicyState { limit: 1000, ceiling: Some(3), growing_from: Some(999), backoff: 99, ..Default::default() };
    let q = Policy::from_state(cfg(64, 1, 64, None, 3, 8), garbage);
    check_invariants(&q);
    assert_eq!((q.limit(), q.ceiling(), q.state().backoff), (2, Some(3), MAX_BACKOFF));
}

#[test]
fn state_and_events_serialise() {
    let mut p = Policy::new(cfg(64, 1, 64, None, 2, 8));
    let mut log = Vec::new();
    p.observe_memory(8, 1000, 10_000);
    for i in 0..40 {
        run_step(&mut p, if i < 20 { 12 } else { 30 }, &mut log).result.unwrap();
    }
    let json = serde_json::to_string(p.state()).unwrap();
    let back: PolicyState = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, p.state());
    // Missing fields default (forward compatibility of checkpoints).
    let partial: PolicyState = serde_json::from_str(r#"{"limit": 16, "ceiling": 22}"#).unwrap();
    let q = Policy::from_state(cfg(64, 1, 64, None, 2, 8), partial);
    assert_eq!((q.limit(), q.ceiling()), (16, Some(22)));

    let e = Event::Shrink { from: 64, to: 32, reason: ShrinkReason::Halved };
    assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"shrink","from":64,"to":32,"reason":"halved"}"#);
    let e = Event::GrowFailed { at: 13, back_to: 11, next_try_after_steps: 8 };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"kind":"grow_failed","at":13,"back_to":11,"next_try_after_steps":8}"#
    );
    for e in &log {
        let v: serde_json::Value = serde_json::to_value(e).unwrap();
        assert_eq!(v["kind"], e.kind());
        assert_eq!(&serde_json::from_value::<Event>(v).unwrap(), e);
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(Event::Grow { from: 1, to: 2 }.kind(), "grow");
}
