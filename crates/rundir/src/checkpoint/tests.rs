//! Tests of the parent module.

use super::*;

fn payload(step: usize) -> Payload {
    Payload {
        step,
        files: vec![("a.bin".into(), vec![step as u8; 100]), ("state.json".into(), b"{}".to_vec())],
        simulate_full_disk: false,
    }
}

#[test]
fn write_lists_prunes_and_detects_damage() {
    let d = tempfile::tempdir().unwrap();
    for s in [10, 20, 30] {
        write(d.path(), &payload(s), 2).unwrap();
    }
    let l: Vec<usize> = list(d.path()).unwrap().iter().map(|x| x.0).collect();
    assert_eq!(l, vec![30, 20]);
    // state.json "{}" does not parse as TrainState: verify reports it.
    let e = verify(&d.path().join("step-30")).unwrap_err();
    assert!(e.contains("state.json"), "{e}");
    // Truncation is detected by size.
    std::fs::write(d.path().join("step-30/a.bin"), [1u8; 10]).unwrap();
    let e = verify(&d.path().join("step-30")).unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    // Same size, flipped byte: checksum.
    std::fs::write(d.path().join("step-20/a.bin"), [7u8; 100]).unwrap();
    let e = verify(&d.path().join("step-20")).unwrap_err();
    assert!(e.contains("checksum"), "{e}");
    // A directory without manifest does not count.
    std::fs::create_dir_all(d.path().join("step-99")).unwrap();
    assert_eq!(list(d.path()).unwrap()[0].0, 30);
}

fn steps(root: &Path) -> Vec<usize> {
    list(root).unwrap().iter().map(|x| x.0).collect()
}

#[test]
fn retention_keeps_the_newest_writes_not_the_highest_steps() {
    let d = tempfile::tempdir().unwrap();
    for s in [10, 20, 50] {
        write(d.path(), &payload(s), 2).unwrap();
    }
    assert_eq!(steps(d.path()), vec![50, 20]);
    // A resumed history writes lower steps after step 50: those are the newest.
    write(d.path(), &payload(30), 2).unwrap();
    write(d.path(), &payload(40), 2).unwrap();
    assert_eq!(steps(d.path()), vec![40, 30], "step-50 was written first, so it goes first");
}

#[test]
fn abandoning_moves_later_checkpoints_out_of_the_namespace() {
    let d = tempfile::tempdir().unwrap();
    for s in [30, 40, 50] {
        write(d.path(), &payload(s), 3).unwrap();
    }
    assert_eq!(abandon_after(d.path(), 30).unwrap(), vec![40, 50]);
    assert_eq!(steps(d.path()), vec![30]);
    assert!(d.path().join("abandoned/step-40/manifest.json").is_file());
    assert!(d.path().join("abandoned/step-50/manifest.json").is_file());
    // The new history's checkpoints are what retention keeps.
    for s in [31, 32, 33] {
        write(d.path(), &payload(s), 3).unwrap();
    }
    assert_eq!(steps(d.path()), vec![33, 32, 31]);
    // Abandoning step 50 twice keeps both copies.
    write(d.path(), &payload(50), 3).unwrap();
    abandon_after(d.path(), 33).unwrap();
    assert!(d.path().join("abandoned/step-50.2/manifest.json").is_file());
}

#[test]
fn a_failed_write_names_its_path_removes_its_temporary_directory_and_keeps_the_others() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &payload(10), 2).unwrap();
    let mut p = payload(20);
    p.simulate_full_disk = true;
    let e = write(d.path(), &p, 2).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("step-20.tmp") && msg.contains("No space left on device"), "{msg}");
    assert_eq!(e.source.raw_os_error(), Some(libc::ENOSPC));
    assert!(!d.path().join("step-20.tmp").exists(), "the partial checkpoint is removed");
    assert_eq!(steps(d.path()), vec![10]);
    assert_eq!(std::fs::read(d.path().join("step-10/a.bin")).unwrap(), vec![10u8; 100]);
}

#[test]
fn rewriting_a_step_swaps_the_new_copy_in_and_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &payload(10), 2).unwrap();
    let mut p = payload(10);
    p.files[0].1 = vec![99u8; 100];
    write(d.path(), &p, 2).unwrap();
    assert_eq!(std::fs::read(d.path().join("step-10/a.bin")).unwrap(), vec![99u8; 100]);
    let names: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    assert_eq!(names, vec!["step-10".to_string()]);
}

#[test]
fn a_replaced_copy_counts_only_while_its_successor_is_missing() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &payload(10), 2).unwrap();
    // A crash between "step-10 -> step-10.old" and "step-10.tmp -> step-10".
    std::fs::rename(d.path().join("step-10"), d.path().join("step-10.old")).unwrap();
    assert_eq!(steps(d.path()), vec![10]);
    assert!(list(d.path()).unwrap()[0].1.ends_with("step-10.old"));
    write(d.path(), &payload(10), 2).unwrap();
    assert_eq!(list(d.path()).unwrap(), vec![(10, d.path().join("step-10"))]);
    assert!(!d.path().join("step-10.old").exists(), "the replaced copy is garbage once step-10 exists");
}

#[test]
fn a_directory_that_cannot_be_listed_is_an_error_naming_it_not_an_empty_run() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("checkpoints");
    std::fs::write(&root, "").unwrap();
    let e = list(&root).unwrap_err();
    assert!(e.to_string().contains(&root.display().to_string()), "{e}");
    assert!(newest(&root).is_err());
    let msg = find(&root, None).unwrap_err();
    assert!(msg.contains(&root.display().to_string()) && msg.contains("Fix:"), "{msg}");
    assert!(write(&root, &payload(10), 3).is_err());
}

#[test]
fn the_newest_checkpoint_and_what_its_state_says() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(newest(d.path()).unwrap(), None);
    assert_eq!(newest(&d.path().join("missing")).unwrap(), None, "a missing directory holds none");
    write(d.path(), &payload(10), 3).unwrap();
    let mut p = payload(20);
    p.files[1].1 = br#"{"step":20,"recovery_s":1.25,"wall_s":17.0}"#.to_vec();
    write(d.path(), &p, 3).unwrap();
    // An incomplete checkpoint (no manifest) does not count.
    std::fs::create_dir_all(d.path().join("step-30.tmp")).unwrap();
    std::fs::create_dir_all(d.path().join("step-40")).unwrap();
    let n = newest(d.path()).unwrap().unwrap();
    assert_eq!((n.step, n.dir.clone()), (20, d.path().join("step-20")));
    let st = n.state.unwrap();
    assert_eq!(st.recovery_s, Some(1.25));
}

#[test]
fn a_full_state_round_trips_and_reads_as_a_partial_one() {
    let st = TrainState {
        step: 7,
        samples_seen: 672,
        cursor: oomph_data::Cursor::default(),
        policy: oomph_sched::PolicyState::default(),
        eval_batch: 48,
        seed: 3,
        recipe_fingerprint: "abc".into(),
        last_loss: Some(0.5),
        oom_events: 1,
        recovery_s: 0.25,
        wall_s: 9.5,
        restarts: 1,
        resumes: 2,
        reason: "every".into(),
        data: None,
        total_steps: Some(40),
        nonfinite_steps: 0,
        nonfinite_run: 0,
        ranks: 1,
    };
    let text = serde_json::to_vec_pretty(&st).unwrap();
    assert_eq!(serde_json::from_slice::<TrainState>(&text).unwrap(), st);
    let p: PartialState = serde_json::from_slice(&text).unwrap();
    assert_eq!(p.recovery_s, Some(0.25));
    // An older state without the fields added later still reads.
    let mut v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    for k in ["data", "total_steps", "nonfinite_steps", "nonfinite_run"] {
        v.as_object_mut().unwrap().remove(k);
    }
    let old: TrainState = serde_json::from_value(v).unwrap();
    assert_eq!((old.total_steps, old.nonfinite_steps), (None, 0));
}
