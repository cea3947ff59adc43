//! Fixture run directories written by the tests, rendered and summarised.

use crate::run::Run;
use crate::{render, summary_text, ReportError, PANEL_HEIGHT, TITLE_HEIGHT, WIDTH};
use std::fmt::Write as _;
use std::path::Path;

/// Which fixture to write.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// `summary.json` present, memory recorded.
    Finished,
    /// No `summary.json`, a torn last line, a checkpoint, no memory recorded.
    Crashed,
}

const N: u64 = 96;

fn plan(limit: u64) -> (u64, u64) {
    let k = N.div_ceil(limit);
    (N.div_ceil(k), k)
}

fn step_line(step: u64, limit: u64, wall: f64, ooms: u64, mem: bool, loss_shift: f64) -> String {
    let (micro, chunks) = plan(limit);
    let loss = 2.3 * (-(step as f64) / 15.0).exp() + 0.1 + loss_shift + 0.02 * ((step * 7) % 5) as f64;
    let speed = 4000.0 / chunks as f64 + (step % 3) as f64 * 50.0;
    let mut s = format!(
        r#"{{"kind":"step","step":{step},"samples_seen":{},"loss":{loss},"lr":0.003,"micro_batch":{micro},"chunks":{chunks},"samples_per_sec":{speed},"wall_s":{wall},"oom_events":{ooms}"#,
        step * N
    );
    if mem {
        let used = (1u64 << 30) + micro * (20 << 20) + (step % 4) * (8 << 20);
        let _ = write!(s, r#","mem_used":{used},"mem_total":{}"#, 4u64 << 30);
    }
    s.push('}');
    s
}

fn eval_line(step: u64, wall: f64) -> String {
    let loss = 2.4 * (-(step as f64) / 15.0).exp() + 0.15;
    format!(
        r#"{{"kind":"eval","step":{step},"samples_seen":{},"valid_loss":{loss},"metrics":{{"accuracy":{}}},"eval_batch":64,"wall_s":{wall}}}"#,
        step * N,
        1.0 - loss / 3.0
    )
}

/// Writes a 40-step run with an OOM and shrink (step 8), a worker death, restart and resume
/// from the checkpoint at step 10 (steps 11..14 recorded twice), growth (steps 25, 33), a
/// failed growth (step 33), evaluations every 10 steps and an evaluation shrink (step 20).
fn write_fixture(dir: &Path, v: Variant) {
    let mem = v == Variant::Finished;
    std::fs::write(
        dir.join("recipe.resolved.toml"),
        "[run]\nname = \"fixture-run\"\nseed = 7\n\n[training]\nsteps = 40\neffective_batch = 96\neval_every = 10\n",
    )
    .unwrap();
    let mut m = String::new();
    let mut e = String::new();
    let ev = |e: &mut String, kind: &str, step: u64, wall: f64, rest: &str| {
        let _ = writeln!(e, r#"{{"kind":"{kind}","step":{step},"wall_s":{wall}{rest}}}"#);
    };
    // First worker: limit 64 (48+48), OOM at step 8 -> 32, dies during step 15.
    let mut ooms = 0;
    for step in 1..=14 {
        let wall = step as f64 * 0.5;
        let limit = if step < 8 { 64 } else { 32 };
        if step == 8 {
            ooms += 1;
            ev(
                &mut e,
                "oom",
                8,
                wall,
                r#","phase":"forward","micro_batch":48,"message":"can't allocate buffer of size: 123""#,
            );
            ev(&mut e, "shrink", 8, wall, r#","kind":"shrink","from":64,"to":32,"reason":"halved""#);
        }
        if step == 12 {
            // Abandoned by the resume from step 10: not part of the history.
            ev(&mut e, "grow", 12, wall, r#","kind":"grow","from":32,"to":48"#);
        }
        let _ = writeln!(m, "{}", step_line(step, limit, wall, ooms, mem, 0.05));
        if step == 10 {
            let _ = writeln!(m, "{}", eval_line(10, wall));
            ev(&mut e, "checkpoint", 10, wall, r#","reason":"every""#);
        }
    }
    ev(&mut e, "restart", 15, 7.6, r#","cause":"killed by SIGKILL","micro_batch":32,"restart":1"#);
    ev(&mut e, "resume", 10, 5.0, r#","from_step":10,"checkpoint":"checkpoints/step-10","micro_batch":32"#);
    ev(&mut e, "shrink", 11, 5.0, r#","kind":"shrink","from":32,"to":16,"reason":"worker_died""#);
    // Second worker: steps 11.. again.
    let mut limit = 16;
    for step in 11..=40 {
        let wall = 5.0 + (step - 10) as f64 * 0.6;
        if step == 25 {
            ev(&mut e, "grow", 25, wall, r#","kind":"grow","from":16,"to":24"#);
            limit = 24;
        }
        if step == 33 {
            ev(&mut e, "grow", 33, wall, r#","kind":"grow","from":24,"to":32"#);
            ooms += 1;
            ev(&mut e, "oom", 33, wall, r#","phase":"backward","micro_batch":32,"message":"can't allocate""#);
            ev(
                &mut e,
                "grow_failed",
                33,
                wall,
                r#","kind":"grow_failed","at":32,"back_to":24,"next_try_after_steps":40"#,
            );
        }
        let _ = writeln!(m, "{}", step_line(step, limit, wall, ooms, mem, 0.0));
        if step % 10 == 0 {
            let _ = writeln!(m, "{}", eval_line(step, wall));
        }
        if step == 20 {
            // Evaluation's own batch: not part of the micro-batch history.
            ev(&mut e, "eval_shrink", 20, wall, r#","from":64,"reason":"oom","to":32"#);
        }
        if step == 30 {
            ev(&mut e, "checkpoint", 30, wall, r#","reason":"every""#);
        }
    }
    match v {
        Variant::Crashed => {
            // The worker died mid-write.
            m.push_str(r#"{"kind":"step","step":41,"samples_seen":39"#);
            e.push_str(r#"{"kind":"oom","st"#);
            let ck = dir.join("checkpoints/step-30");
            std::fs::create_dir_all(&ck).unwrap();
            std::fs::write(ck.join("state.json"), r#"{"step":30,"recovery_s":1.25,"wall_s":17.0}"#).unwrap();
            std::fs::write(ck.join("manifest.json"), r#"{"format":1,"step":30,"files":[]}"#).unwrap();
            // An incomplete checkpoint (no manifest) does not count.
            std::fs::create_dir_all(dir.join("checkpoints/step-40.tmp")).unwrap();
        }
        Variant::Finished => {
            std::fs::write(
                dir.join("summary.json"),
                r#"{"name":"fixture-run","steps":40,"samples_seen":3840,"effective_batch":96,
                   "train_loss":0.21,"valid_loss":0.3,"valid_accuracy":0.9,"valid_metrics":{"accuracy":0.9},
                   "wall_s":23.0,"oom_events":2,"micro_batch_final":24,
                   "micro_batch_history":[64,32,21,32],"recovery_s":0.75,"restarts":1,"resumes":1,
                   "parameters":12345,"model_path":"runs/fixture-run/model.safetensors"}"#,
            )
            .unwrap();
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), m).unwrap();
    std::fs::write(dir.join("events.jsonl"), e).unwrap();
}

/// Decodes an RGB PNG: (width, height, pixels).
fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(f).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px = buf[..info.buffer_size()].chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    (info.width, info.height, px)
}

/// Checks the title band has text and every panel band is well filled.
fn check_png(path: &Path, panels: usize) {
    let (w, h, px) = decode(path);
    assert_eq!((w, h), (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT * panels as u32));
    let band = |y0: u32, y1: u32| {
        let mut colours = std::collections::HashSet::new();
        let mut ink = 0usize;
        let mut dark = 0usize;
        for y in y0..y1 {
            for x in 0..w {
                let p = px[(y * w + x) as usize];
                colours.insert(p);
                if p != [255, 255, 255] {
                    ink += 1;
                }
                if p.iter().all(|&c| c < 80) {
                    dark += 1;
                }
            }
        }
        (colours.len(), ink, dark)
    };
    let (_, _, title_dark) = band(0, 40);
    assert!(title_dark > 300, "the title band has almost no text ({title_dark} dark pixels)");
    for i in 0..panels as u32 {
        let y0 = 40 + i * PANEL_HEIGHT;
        let (colours, ink, dark) = band(y0, y0 + PANEL_HEIGHT);
        assert!(colours > 20, "panel {i}: only {colours} distinct colours");
        assert!(ink > 5_000, "panel {i}: only {ink} non-background pixels");
        assert!(dark > 1_000, "panel {i}: only {dark} dark (text and axis) pixels");
    }
}

#[test]
fn renders_a_finished_run_with_memory() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), Variant::Finished);
    let r = render(dir.path()).unwrap();
    assert_eq!(r.panels, ["loss", "micro-batch", "throughput", "memory"]);
    assert!(r.finished);
    assert_eq!(r.steps, 40);
    assert_eq!(r.size, (1200, 40 + 4 * 300));
    check_png(&r.png, 4);
    let svg = std::fs::read_to_string(&r.svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.contains("fixture-run"), "the SVG lacks the title");
    assert!(svg.contains("effective batch 96"));
    assert!(svg.contains("memory in use (GiB)"));
    assert!(!dir.path().join("report.png.tmp").exists() && !dir.path().join("report.svg.tmp").exists());
}

#[test]
fn renders_a_crashed_run_without_summary() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), Variant::Crashed);
    let r = render(dir.path()).unwrap();
    assert_eq!(r.panels, ["loss", "micro-batch", "throughput"]);
    assert!(!r.finished);
    assert_eq!(r.steps, 40);
    check_png(&r.png, 3);
    let svg = std::fs::read_to_string(&r.svg).unwrap();
    assert!(svg.contains("fixture-run"));
    assert!(svg.contains("did not finish"));
    for label in
        ["train loss", "eval loss", "OOM (failed size)", "grow (size tried)", "restart", "resume", "samples / s"]
    {
        assert!(svg.contains(label), "the SVG lacks {label:?}");
    }
}

#[test]
fn repeated_steps_keep_the_last_record_and_torn_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), Variant::Crashed);
    let run = Run::load(dir.path()).unwrap();
    let steps: Vec<usize> = run.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>());
    // Steps 11..14 were re-run after the resume at micro-batch 16 (6 chunks of 16).
    assert_eq!(run.steps[11].chunks, 6);
    assert_eq!(run.steps[9].chunks, 3);
    assert_eq!(run.evals.iter().map(|e| e.step).collect::<Vec<_>>(), [10, 20, 30, 40]);
    assert_eq!(run.skipped_lines, 2);
    assert_eq!(run.effective_batch, Some(96));
    assert_eq!(run.checkpoint.as_ref().map(|c| c.step), Some(30));
}

/// A run with several ranks says so, from the summary or, before it, from the recipe.
#[test]
fn the_summary_names_the_ranks_of_a_run_with_several() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), Variant::Finished);
    let summary = dir.path().join("summary.json");
    let text = std::fs::read_to_string(&summary).unwrap().replace(r#""name":"#, r#""ranks":3,"name":"#);
    std::fs::write(&summary, text).unwrap();
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("effective batch 96 (3 ranks) | wall 23.0s"), "{text}");
    // A summary written before it recorded the ranks (regression: it was read as 1 rank,
    // over the recipe's 2), and a run without a summary yet.
    let recipe = dir.path().join("recipe.resolved.toml");
    std::fs::write(&recipe, "[training]\neffective_batch = 96\n[distributed]\nranks = 2\n").unwrap();
    let text = std::fs::read_to_string(&summary).unwrap().replace(r#""ranks":3,"#, "");
    std::fs::write(&summary, text).unwrap();
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("effective batch 96 (2 ranks) | wall 23.0s"), "{text}");
    std::fs::remove_file(&summary).unwrap();
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("effective batch 96 (2 ranks) |"), "{text}");
}

#[test]
fn summary_of_a_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), Variant::Finished);
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("== fixture-run ==  finished"), "{text}");
    assert!(text.contains("micro-batch 64 -> 32 -> 21 -> 32"), "{text}");
    assert!(
        text.contains("steps      40 | samples 3,840 | effective batch 96 | wall 23.0s | 12,345 parameters"),
        "{text}"
    );
    assert!(text.contains("train loss 0.2100 | valid loss 0.3000 | valid accuracy 0.9000"), "{text}");
    assert!(text.contains("oom events 2 | restarts 1 | resumes 1 | time lost to recovery 0.75s"), "{text}");
    assert!(text.contains("model      runs/fixture-run/model.safetensors"), "{text}");
    assert!(text.contains("report.png") && text.contains("not drawn yet"), "{text}");
    render(dir.path()).unwrap();
    let text = summary_text(dir.path()).unwrap();
    assert!(!text.contains("not drawn yet"), "{text}");
}

#[test]
fn summary_of_a_crashed_run_is_derived_from_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), Variant::Crashed);
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("DID NOT FINISH"), "{text}");
    assert!(text.contains("micro-batch 64 -> 32 -> 16 -> 24 -> 32 -> 24"), "{text}");
    assert!(text.contains("steps      40 | samples 3,840 | effective batch 96 | wall 23.0s"), "{text}");
    assert!(text.contains("oom events 2 | restarts 1 | resumes 1"), "{text}");
    assert!(text.contains("1.25s (as of the checkpoint at step 30)"), "{text}");
    assert!(text.contains("valid accuracy") && text.contains("(eval at step 40)"), "{text}");
    assert!(text.contains("skipped 2 unreadable line(s)"), "{text}");
    assert!(text.contains("checkpoints/step-30"), "{text}");
}

#[test]
fn errors_name_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let e = render(dir.path()).unwrap_err();
    assert!(matches!(e, ReportError::NotARunDir { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("no metrics.jsonl in") && msg.contains(&dir.path().display().to_string()) && msg.contains("Fix:"),
        "{msg}"
    );
    assert!(matches!(summary_text(dir.path()), Err(ReportError::NotARunDir { .. })));

    // A run that has not finished a step yet (only a torn line).
    std::fs::write(dir.path().join("metrics.jsonl"), "{\"kind\":\"st").unwrap();
    let e = render(dir.path()).unwrap_err();
    assert!(matches!(e, ReportError::NoSteps { .. }), "{e}");
    assert!(e.to_string().contains("metrics.jsonl"));
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("DID NOT FINISH") && text.contains("steps      0"), "{text}");

    std::fs::write(dir.path().join("summary.json"), "{not json").unwrap();
    let e = summary_text(dir.path()).unwrap_err();
    assert!(matches!(e, ReportError::Summary { .. }), "{e}");
    assert!(e.to_string().contains("summary.json") && e.to_string().contains("Fix:"));
}

#[test]
fn a_single_step_run_renders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metrics.jsonl"), step_line(1, 64, 0.5, 0, false, 0.0) + "\n").unwrap();
    let r = render(dir.path()).unwrap();
    assert_eq!(r.steps, 1);
    let (w, h, _) = decode(&r.png);
    assert_eq!((w, h), (1200, 40 + 3 * 300));
}

/// Copies the fixture of a real run (`fixtures/digits-oom-demo`: 40 steps of an MLP on the
/// digits CSV with simulated OOMs, one SIGKILLed worker, a restart and a resume) into a
/// temporary directory, without `summary.json` when `finished` is false.
fn real_fixture(finished: bool) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/digits-oom-demo");
    let dir = tempfile::tempdir().unwrap();
    for f in ["recipe.resolved.toml", "metrics.jsonl", "events.jsonl", "summary.json"] {
        if finished || f != "summary.json" {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    dir
}

#[test]
fn renders_the_real_fixture() {
    let dir = real_fixture(true);
    let r = render(dir.path()).unwrap();
    assert_eq!(r.panels, ["loss", "micro-batch", "throughput"]);
    check_png(&r.png, 3);
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("micro-batch 48 -> 24 -> 32 -> 48 -> 32 -> 16 -> 24"), "{text}");
    assert!(text.contains("oom events 4 | restarts 1 | resumes 1"), "{text}");
}

#[test]
fn the_history_rebuilt_from_events_matches_the_policy_s_own() {
    let dir = real_fixture(false);
    // Written by an older trainer: policy events with their kind twice, evaluation shrinks as
    // `"kind":"shrink","scope":"eval"`, restarts and checkpoints with fewer fields. All read.
    let run = Run::load(dir.path()).unwrap();
    assert_eq!(run.skipped_lines, 0);
    let eval_shrinks = run.events.iter().filter(|e| e.event.kind() == "eval_shrink").count();
    assert_eq!(eval_shrinks, 1, "the one of the abandoned first worker is dropped by the resume");
    let text = summary_text(dir.path()).unwrap();
    assert!(text.contains("DID NOT FINISH"), "{text}");
    assert!(text.contains("micro-batch 48 -> 24 -> 32 -> 48 -> 32 -> 16 -> 24"), "{text}");
    assert!(text.contains("oom events 4 | restarts 1 | resumes 1"), "{text}");
    let r = render(dir.path()).unwrap();
    assert!(!r.finished);
}
