//! Tests of the parent module.

use super::*;
use oomph_sched::{Event as Policy, ShrinkReason};

/// Lines exactly as the trainer and the supervisor write them today (and as older
/// versions wrote them), with the event each must read as.
fn todays_lines() -> Vec<(&'static str, EventLine)> {
    let at = |step, wall_s, event| EventLine { step, wall_s, event };
    vec![
        (
            r#"{"kind":"oom","step":1,"wall_s":0.055111689,"message":"can't allocate buffer of size: 123","micro_batch":48,"phase":"forward"}"#,
            at(
                1,
                0.055111689,
                Event::Oom {
                    phase: "forward".into(),
                    micro_batch: 48,
                    message: "can't allocate buffer of size: 123".into(),
                },
            ),
        ),
        (
            r#"{"kind":"give_up","step":3,"wall_s":1.0,"message":"does not fit","micro_batch":1}"#,
            at(3, 1.0, Event::GiveUp { phase: None, micro_batch: Some(1), message: "does not fit".into() }),
        ),
        (
            r#"{"kind":"give_up","step":3,"wall_s":1.0,"message":"m","phase":"optimizer"}"#,
            at(3, 1.0, Event::GiveUp { phase: Some("optimizer".into()), micro_batch: None, message: "m".into() }),
        ),
        (
            r#"{"kind":"checkpoint","step":10,"wall_s":1.5,"path":"/r/checkpoints/step-10","reason":"every","stall_s":0.001,"write_s":0.25}"#,
            at(
                10,
                1.5,
                Event::Checkpoint {
                    reason: "every".into(),
                    path: "/r/checkpoints/step-10".into(),
                    write_s: 0.25,
                    stall_s: 0.001,
                },
            ),
        ),
        (
            r#"{"kind":"checkpoint_skipped","step":11,"wall_s":0.1,"message":"/r/checkpoints/step-10: checksum mismatch (corrupt)","moved_to":"/r/checkpoints/damaged/step-10"}"#,
            at(
                11,
                0.1,
                Event::CheckpointSkipped {
                    message: "/r/checkpoints/step-10: checksum mismatch (corrupt)".into(),
                    moved_to: "/r/checkpoints/damaged/step-10".into(),
                },
            ),
        ),
        (
            r#"{"kind":"checkpoint_refused","step":4,"wall_s":0.4,"message":"not finite","reason":"final"}"#,
            at(4, 0.4, Event::CheckpointRefused { reason: "final".into(), message: "not finite".into() }),
        ),
        (
            r#"{"kind":"resume","step":1,"wall_s":0.407808331,"checkpoint":"/tmp/realfix/run/checkpoints/step-1","from_step":1,"micro_batch":24}"#,
            at(
                1,
                0.407808331,
                Event::Resume {
                    from_step: 1,
                    checkpoint: "/tmp/realfix/run/checkpoints/step-1".into(),
                    micro_batch: 24,
                },
            ),
        ),
        (
            r#"{"kind":"abandoned","step":30,"wall_s":0.2,"steps":[40,50]}"#,
            at(30, 0.2, Event::Abandoned { steps: vec![40, 50] }),
        ),
        (
            r#"{"kind":"auto_settled","step":1,"wall_s":0.3,"chunks":2,"micro_batch":48,"ooms":1}"#,
            at(1, 0.3, Event::AutoSettled { micro_batch: 48, chunks: 2, ooms: 1 }),
        ),
        (
            r#"{"kind":"nonfinite_step","step":5,"wall_s":0.5,"grad_norm":null,"gradients_finite":false,"in_a_row":2,"loss":"NaN","lr":0.003}"#,
            at(
                5,
                0.5,
                Event::NonfiniteStep {
                    loss: "NaN".into(),
                    gradients_finite: false,
                    grad_norm: None,
                    lr: 0.003,
                    in_a_row: 2,
                },
            ),
        ),
        (
            r#"{"kind":"nonfinite_step","step":6,"wall_s":0.6,"grad_norm":"inf","gradients_finite":true,"in_a_row":1,"loss":"1.5","lr":0.003}"#,
            at(
                6,
                0.6,
                Event::NonfiniteStep {
                    loss: "1.5".into(),
                    gradients_finite: true,
                    grad_norm: Some("inf".into()),
                    lr: 0.003,
                    in_a_row: 1,
                },
            ),
        ),
        (
            r#"{"kind":"diverged","step":7,"wall_s":0.7,"message":"the run diverged"}"#,
            at(7, 0.7, Event::Diverged { message: "the run diverged".into() }),
        ),
        (
            r#"{"kind":"shrink","step":1,"wall_s":0.05521963,"from":48,"reason":"halved","to":24}"#,
            at(1, 0.05521963, Policy::Shrink { from: 48, to: 24, reason: ShrinkReason::Halved }.into()),
        ),
        (
            r#"{"kind":"grow","step":9,"wall_s":1.166887525,"from":24,"to":32}"#,
            at(9, 1.166887525, Policy::Grow { from: 24, to: 32 }.into()),
        ),
        (
            r#"{"kind":"grow_failed","step":18,"wall_s":2.390636772,"at":48,"back_to":32,"next_try_after_steps":16}"#,
            at(18, 2.390636772, Policy::GrowFailed { at: 48, back_to: 32, next_try_after_steps: 16 }.into()),
        ),
        (
            r#"{"kind":"ceiling_cleared","step":11,"wall_s":1.401372686,"ceiling":32}"#,
            at(11, 1.401372686, Policy::CeilingCleared { ceiling: 32 }.into()),
        ),
        (
            r#"{"kind":"eval_shrink","step":11,"wall_s":1.5,"from":48,"reason":"oom","to":24}"#,
            at(11, 1.5, Event::EvalShrink { from: 48, to: 24, reason: EvalShrinkReason::Oom }),
        ),
        (
            r#"{"kind":"restart","step":9,"wall_s":2.4,"action":"the micro-batch below 32","cause":"killed by SIGKILL","eval_batch":64,"memory":true,"micro_batch":32,"phase":"train","restart":1}"#,
            at(
                9,
                2.4,
                Event::Restart {
                    cause: "killed by SIGKILL".into(),
                    memory: true,
                    phase: "train".into(),
                    micro_batch: Some(32),
                    eval_batch: Some(64),
                    restart: 1,
                    action: "the micro-batch below 32".into(),
                },
            ),
        ),
        (
            r#"{"kind":"restart","step":9,"wall_s":2.4,"action":"stop","cause":"c","eval_batch":null,"memory":false,"micro_batch":null,"phase":"unknown","restart":2}"#,
            at(
                9,
                2.4,
                Event::Restart {
                    cause: "c".into(),
                    memory: false,
                    phase: "unknown".into(),
                    micro_batch: None,
                    eval_batch: None,
                    restart: 2,
                    action: "stop".into(),
                },
            ),
        ),
    ]
}

#[test]
fn todays_lines_read_as_typed_events_and_write_back_byte_for_byte() {
    for (line, want) in todays_lines() {
        let got = parse_event(line).unwrap_or_else(|| panic!("does not parse: {line}"));
        assert_eq!(got, want, "{line}");
        assert_eq!(serde_json::to_string(&got).unwrap(), line);
        assert_eq!(got.event.kind(), serde_json::from_str::<Value>(line).unwrap()["kind"]);
    }
}

#[test]
fn every_kind_round_trips_through_a_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("events.jsonl");
    let lines: Vec<EventLine> = todays_lines().into_iter().map(|(_, e)| e).collect();
    let mut w = JsonLines::open(&p).unwrap();
    for l in &lines {
        w.write(l).unwrap();
    }
    drop(w);
    assert_eq!(read_events(&p).unwrap(), (lines, 0));
    assert_eq!(read_events(&d.path().join("missing.jsonl")).unwrap(), (vec![], 0));
}

#[test]
fn older_shapes_still_read() {
    // A policy event that carried its kind twice.
    let e =
        parse_event(r#"{"kind":"shrink","step":1,"wall_s":0.05,"from":48,"kind":"shrink","reason":"halved","to":24}"#);
    assert_eq!(e.map(|e| e.event), Some(Policy::Shrink { from: 48, to: 24, reason: ShrinkReason::Halved }.into()));
    // An evaluation shrink written as a shrink with a scope.
    let e = parse_event(r#"{"kind":"shrink","step":11,"wall_s":1.3,"from":48,"reason":"oom","scope":"eval","to":24}"#);
    assert_eq!(e.map(|e| e.event), Some(Event::EvalShrink { from: 48, to: 24, reason: EvalShrinkReason::Oom }));
    let e = parse_event(
        r#"{"kind":"shrink","step":11,"wall_s":1.3,"from":48,"reason":"worker_died","scope":"eval","to":24}"#,
    );
    assert_eq!(e.map(|e| e.event), Some(Event::EvalShrink { from: 48, to: 24, reason: EvalShrinkReason::WorkerDied }));
    // Fields added later default.
    let e = parse_event(r#"{"kind":"checkpoint","step":1,"wall_s":0.2,"reason":"oom"}"#).unwrap();
    assert_eq!(e.event, Event::Checkpoint { reason: "oom".into(), path: String::new(), write_s: 0.0, stall_s: 0.0 });
    let e = parse_event(
        r#"{"kind":"restart","step":9,"wall_s":2.4,"cause":"killed by SIGKILL","micro_batch":32,"restart":1}"#,
    )
    .unwrap();
    assert!(
        matches!(&e.event, Event::Restart { phase, micro_batch: Some(32), eval_batch: None, .. } if phase == "unknown")
    );
    assert!(e.event.is_restart());
}

#[test]
fn an_evaluation_shrink_is_its_own_kind() {
    let line = EventLine::new(11, 1.5, Event::EvalShrink { from: 48, to: 24, reason: EvalShrinkReason::WorkerDied });
    let text = serde_json::to_string(&line).unwrap();
    assert_eq!(text, r#"{"kind":"eval_shrink","step":11,"wall_s":1.5,"from":48,"reason":"worker_died","to":24}"#);
    assert!(!text.contains("scope"));
    assert!(line.event.policy().is_none(), "not the training limit");
    assert_eq!(line.to_string(), "[eval_shrink] step 11: evaluation batch 48 -> 24 (worker died of memory)");
}

#[test]
fn torn_and_unknown_lines_are_skipped_and_counted() {
    let text = "{\"kind\":\"grow\",\"step\":9,\"wall_s\":1.0,\"from\":24,\"to\":32}\n\n\
                {\"kind\":\"something_new\",\"step\":9,\"wall_s\":1.0}\n\
                [1,2]\n\
                {\"kind\":\"grow\",\"step\":9,\"wall_s\":1.0,\"from\":24}\n\
                {\"kind\":\"oom\",\"st";
    let (events, skipped) = parse_events(text);
    assert_eq!(events.len(), 1);
    assert_eq!(skipped, 4);
}

#[test]
fn policy_events_convert_both_ways() {
    for p in one_of_each_policy_event() {
        let e = Event::from(p.clone());
        assert_eq!(e.kind(), p.kind());
        assert_eq!(e.policy(), Some(&p));
        assert_eq!(e.to_string(), p.to_string());
        // Serialised the same way as the policy's own event.
        assert_eq!(serde_json::to_value(&e).unwrap(), serde_json::to_value(&p).unwrap());
    }
}

/// Every kind of run event, one event each, with the variants' names; the match has no
/// wildcard, so a new variant must be added here (and its kind is then checked below).
fn one_of_each_run_event() -> Vec<Event> {
    let all: Vec<Event> = todays_lines().into_iter().map(|(_, l)| l.event).collect();
    let mut seen = std::collections::BTreeSet::new();
    for e in &all {
        let variant = match e {
            Event::Oom { .. } => "Oom",
            Event::GiveUp { .. } => "GiveUp",
            Event::Checkpoint { .. } => "Checkpoint",
            Event::CheckpointSkipped { .. } => "CheckpointSkipped",
            Event::CheckpointRefused { .. } => "CheckpointRefused",
            Event::Resume { .. } => "Resume",
            Event::Abandoned { .. } => "Abandoned",
            Event::AutoSettled { .. } => "AutoSettled",
            Event::NonfiniteStep { .. } => "NonfiniteStep",
            Event::Diverged { .. } => "Diverged",
            Event::EvalShrink { .. } => "EvalShrink",
            Event::Restart { .. } => "Restart",
            Event::Policy(_) => "Policy",
        };
        seen.insert(variant);
    }
    assert_eq!(seen.len(), 13, "todays_lines lacks a variant: has only {seen:?}");
    all
}

/// The policy's events, one of each kind (no wildcard: a new kind must be added here).
fn one_of_each_policy_event() -> Vec<Policy> {
    let all = vec![
        Policy::Shrink { from: 64, to: 32, reason: ShrinkReason::PredictedFit },
        Policy::Grow { from: 32, to: 48 },
        Policy::GrowFailed { at: 48, back_to: 32, next_try_after_steps: 8 },
        Policy::CeilingCleared { ceiling: 48 },
    ];
    for p in &all {
        match p {
            Policy::Shrink { .. } | Policy::Grow { .. } | Policy::GrowFailed { .. } | Policy::CeilingCleared { .. } => {
            }
        }
    }
    all
}

#[test]
fn no_run_event_kind_is_a_policy_event_kind() {
    // A run event's kind equal to a policy kind would shadow the untagged `Event::Policy`:
    // the policy's lines would no longer read as its events.
    let policy: Vec<&str> = one_of_each_policy_event().iter().map(Policy::kind).collect();
    for e in one_of_each_run_event().iter().filter(|e| e.policy().is_none()) {
        assert!(!policy.contains(&e.kind()), "run event kind {:?} is also a policy event kind", e.kind());
    }
    for p in one_of_each_policy_event() {
        let line = serde_json::to_string(&EventLine::new(4, 0.5, p.clone())).unwrap();
        assert_eq!(parse_event(&line).map(|l| l.event), Some(Event::Policy(p)), "{line}");
    }
}

#[test]
fn a_resume_drops_the_abandoned_future_but_keeps_restarts_and_resumes() {
    let text = [
        r#"{"kind":"shrink","step":8,"wall_s":1,"from":64,"reason":"halved","to":32}"#,
        r#"{"kind":"checkpoint","step":10,"wall_s":1,"reason":"every"}"#,
        r#"{"kind":"grow","step":12,"wall_s":1,"from":32,"to":48}"#,
        r#"{"kind":"restart","step":15,"wall_s":1,"cause":"c","restart":1}"#,
        r#"{"kind":"resume","step":10,"wall_s":1,"checkpoint":"c","from_step":10,"micro_batch":32}"#,
        r#"{"kind":"grow","step":12,"wall_s":1,"from":32,"to":40}"#,
    ]
    .join("\n");
    let (events, _) = parse_events(&text);
    let kept: Vec<(&str, usize)> = linear_history(events).iter().map(|e| (e.event.kind(), e.step)).collect();
    assert_eq!(kept, [("shrink", 8), ("checkpoint", 10), ("restart", 15), ("resume", 10), ("grow", 12)]);
    let (events, _) = parse_events(&text);
    assert_eq!(restarts(&events), 1);
}

#[test]
fn the_console_line_cuts_a_long_message_at_a_word() {
    let long = "word ".repeat(60);
    let line = EventLine::new(3, 0.1, Event::Oom { phase: "forward".into(), micro_batch: 8, message: long });
    let text = line.to_string();
    assert!(text.starts_with("[oom] step 3: out of memory in forward at micro-batch 8 (word word"), "{text}");
    assert!(text.ends_with("word …)"), "{text}");
}
