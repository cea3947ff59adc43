//! End-to-end benchmarks of what oomph's resilience costs: framework overhead against a plain
//! burn loop, the per-chunk cost of accumulation, in-process OOM recovery, worker restart,
//! the adaptive policy against a hindsight oracle, checkpoint cost, and the CPU backend choice.
//!
//! `cargo bench --bench resilience [-- SECTION...]` prints markdown tables (the ones in
//! BENCHMARKS.md). Sections: `backend`, `overhead`, `accumulation`, `recovery`, `restart`,
//! `adaptive`, `checkpoint`; none named runs them all. Every figure is a ratio of times
//! measured in this process (or, for restarts, in the same run), with interleaved
//! repetitions; absolute times drift on a shared machine, ratios much less.
#![allow(missing_docs)]

mod common;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use common::*;
use oomph::data::{Sampler, Splits};
use oomph::recipe::Recipe;
use oomph::sched::plan::{achievable_sizes, max_chunk};
use oomph::train::checkpoint::{self, Payload, TrainState};
use oomph::train::optim::Optim;
use oomph::train::{Data, Models, Objective, Registry};
use oomph::train::{Event, StepRecord};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECTIONS: &[&str] = &["backend", "overhead", "accumulation", "recovery", "restart", "adaptive", "checkpoint"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| s.contains(a.as_str()));
    let t = Instant::now();
    println!("machine: {}, {} CPUs available; backend flex (CPU) unless stated\n", cpu_model(), cpus());
    // Not part of the default run: loops to profile under `perf record`.
    if args.iter().any(|a| a == "profile-loop" || a == "profile-recovery") {
        profile(args.iter().any(|a| a == "profile-recovery"));
        return;
    }
    for &s in SECTIONS {
        if !want(s) {
            continue;
        }
        let ts = Instant::now();
        match s {
            "backend" => backend(),
            "overhead" => overhead(&args),
            "accumulation" => accumulation(),
            "recovery" => recovery(),
            "restart" => restart(),
            "adaptive" => adaptive(),
            "checkpoint" => checkpoint_cost(),
            _ => unreachable!(),
        }
        eprintln!("[{s}: {:.0}s]", ts.elapsed().as_secs_f64());
    }
    eprintln!("[total: {:.0}s]", t.elapsed().as_secs_f64());
}

/// ~10 s of in-process training of the debug mlp, for a profiler: plain steps, or (recovery)
/// one simulated optimizer-phase OOM in every step (retried at the same micro-batch).
fn profile(recovery: bool) {
    let steps = 2000;
    let mut o = base_sets(steps);
    if recovery {
        let list: Vec<String> = (1..=steps).map(|s| format!("{{step={s}, phase=\"optimizer\"}}")).collect();
        o.push(format!("faults.oom_at=[{}]", list.join(", ")));
        o.push("checkpoint.on_oom=false".into());
    }
    let r = shipped("digits-mlp-debug.toml", &o);
    let data = data_for(&r);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let out = train_builtin::<Fx>(r.clone(), &data);
        eprintln!(
            "{} steps, {} OOMs, median step {:.1} µs",
            out.steps.len(),
            out.summary.oom_events,
            median(&out.step_times(10)) * 1e6
        );
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Median per-step time of an in-process run, after `warm` steps.
fn oomph_step<B: AutodiffBackend>(r: &Recipe, data: &Splits, warm: usize) -> f64 {
    median(&train_builtin::<B>(r.clone(), data).step_times(warm))
}

fn base_sets(steps: usize) -> Vec<String> {
    sets(&[&format!("training.steps={steps}"), "training.eval_every=0", "checkpoint.every=0"])
}

fn with(mut v: Vec<String>, more: &[String]) -> Vec<String> {
    v.extend_from_slice(more);
    v
}

// ---------------------------------------------------------------------------------------

fn backend() {
    println!("## CPU backend choice: flex vs ndarray\n");
    println!("Median step time of the same in-process oomph run on each backend (3 interleaved pairs);");
    println!("speed-up = ndarray step time / flex step time (> 1: flex is faster).\n");
    let cases: &[(&str, usize, usize)] = &[
        ("digits-mlp-debug.toml", 150, 20),
        ("tiny-gpt-debug.toml", 80, 10),
        ("digits-mlp.toml", 100, 10),
        ("tiny-gpt.toml", 20, 4),
    ];
    let mut rows = Vec::new();
    for &(name, steps, warm) in cases {
        let r = shipped(name, &base_sets(steps));
        let data = data_for(&r);
        let mut speedup = Vec::new();
        let mut whole = Vec::new();
        let mut micro = String::new();
        for rep in 0..3 {
            let mut run = |flex: bool| {
                let out =
                    if flex { train_builtin::<Fx>(r.clone(), &data) } else { train_builtin::<Nd>(r.clone(), &data) };
                micro = format!("{} x {}", out.steps[0].micro_batch, out.steps[0].chunks);
                (median(&out.step_times(warm)), out.loop_s())
            };
            let (a, b) = if rep % 2 == 0 {
                let f = run(true);
                (f, run(false))
            } else {
                let n = run(false);
                (run(true), n)
            };
            speedup.push(b.0 / a.0);
            whole.push(b.1 / a.1);
        }
        rows.push(vec![
            name.trim_end_matches(".toml").into(),
            micro,
            steps.to_string(),
            spread(&speedup, 2),
            spread(&whole, 2),
        ]);
    }
    table(&["recipe", "micro x chunks", "steps", "flex speed-up, per step", "flex speed-up, whole loop"], &rows);
}

// ---------------------------------------------------------------------------------------

fn overhead(args: &[String]) {
    println!("## Framework overhead: oomph step vs a plain burn loop\n");
    println!("Same model and init (seed), same batches (oomph's sampler), same AdamW, micro-batch = effective");
    println!("batch (one chunk), flex backend, checkpoints and evaluation off. plain: gather, forward, mean");
    println!("loss, backward, `from_grads`, `AdamW::step`, read the loss. The middle rows compose oomph's real");
    println!("components (`oomph-train`'s `step::Trainable::attempt`, then with the `runlog::RunLog`");
    println!("around it) without the loop; the last row is the real in-process `train` loop (per-step wall");
    println!("time from metrics.jsonl). Median step time after warm-up, divided by the plain loop's, median");
    println!("[min..max] over interleaved repetitions.\n");
    let variants: Vec<(&str, Option<Option<Pieces>>)> = vec![
        ("plain burn loop", Some(None)),
        ("oomph's step component (`Trainable::attempt`)", Some(Some(Pieces::Step))),
        ("+ the run log (`current.json`, metrics line, policy)", Some(Some(Pieces::StepAndLog))),
        ("**oomph `train`, in-process (the real loop)**", None),
    ];
    // (label, recipe, steps, warm-up, repetitions, variants run)
    type Case<'a> = (&'a str, &'a str, usize, usize, usize, Vec<usize>);
    let cases: Vec<Case> = vec![
        ("digits-mlp-debug (64 x 1)", "digits-mlp-debug.toml", 300, 30, 7, (0..variants.len()).collect()),
        ("tiny-gpt-debug (8 x 1)", "tiny-gpt-debug.toml", 150, 20, 7, (0..variants.len()).collect()),
        ("big, 101 M parameters (16 x 1)", "", 5, 1, 2, (0..variants.len()).collect()),
    ];
    // `overhead mlp` (or `gpt`, `101`) measures only the cases whose label holds that word.
    let labels = ["mlp", "gpt", "101"];
    let chosen: Vec<&String> = args.iter().filter(|a| labels.contains(&a.as_str())).collect();
    let cases: Vec<Case> =
        cases.into_iter().filter(|c| chosen.is_empty() || chosen.iter().any(|a| c.0.contains(a.as_str()))).collect();
    let mut cols: Vec<Vec<String>> = Vec::new();
    let mut plain_abs = Vec::new();
    for (label, file, steps, warm, reps, which) in &cases {
        let (r, data, big) = if file.is_empty() {
            let (r, d, m) = big_setup(&sets(&[&format!("training.steps={steps}"), "checkpoint.every=0"]));
            (r, d, Some(m))
        } else {
            let eff = shipped(file, &[]).training.effective_batch;
            let r = shipped(file, &with(base_sets(*steps), &sets(&[&format!("micro_batch.initial={eff}")])));
            let d = data_for(&r);
            (r, d, None)
        };
        let feeds = Data::<Fx>::from_splits(data.clone());
        let mut t = vec![Vec::new(); variants.len()];
        for rep in 0..*reps {
            for j in 0..which.len() {
                let i = which[(j + rep) % which.len()];
                let step = match (variants[i].1, &big) {
                    (None, None) => oomph_step::<Fx>(&r, &data, *warm),
                    (None, Some(_)) => median(&train_with(&big_registry(), r.clone(), &data).step_times(*warm)),
                    (Some(None), None) => median(&plain_run::<Fx>(&r, &data, *steps)[*warm..]),
                    (Some(None), Some(m)) => median(
                        &Plain::<Fx, _>::new(m.clone(), &r, train_feed::<Fx, Big<Fx>>(&feeds)).run(*steps)[*warm..],
                    ),
                    (Some(Some(p)), Some(m)) => median(&pieces_run(m.clone(), &r, &data, *steps, p)[*warm..]),
                    (Some(Some(p)), None) => {
                        let device = Default::default();
                        let times = match build::<Fx>(&r, &data, &device) {
                            Builtins::Mlp(m) => pieces_run(m, &r, &data, *steps, p),
                            Builtins::Gpt(m) => pieces_run(m, &r, &data, *steps, p),
                        };
                        median(&times[*warm..])
                    }
                };
                t[i].push(step);
            }
        }
        let _ = label;
        let base = t[0].clone();
        plain_abs.push(median(&base));
        cols.push(
            (0..variants.len())
                .map(|i| {
                    if t[i].is_empty() {
                        "–".to_string()
                    } else {
                        let ratios: Vec<f64> = t[i].iter().zip(&base).map(|(a, b)| a / b).collect();
                        spread(&ratios, 3)
                    }
                })
                .collect(),
        );
    }
    let mut header = vec!["step"];
    header.extend(cases.iter().map(|c| c.0));
    let mut rows: Vec<Vec<String>> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut row = vec![v.0.to_string()];
            row.extend(cols.iter().map(|c| c[i].clone()));
            row
        })
        .collect();
    let mut abs = vec!["(plain step, indicative absolute)".to_string()];
    abs.extend(plain_abs.iter().map(|s| {
        if *s < 1e-3 {
            format!("{:.0} µs", s * 1e6)
        } else {
            format!("{:.0} ms", s * 1e3)
        }
    }));
    rows.push(abs);
    table(&header, &rows);
}

// ---------------------------------------------------------------------------------------

fn accumulation() {
    println!("## Accumulation cost: one step split into k chunks\n");
    println!("Same effective batch, micro-batch fixed at effective / k (growth off). t_k / t_1 is the step");
    println!("time relative to one chunk; the per-chunk fixed cost c is the least-squares slope of t_k");
    println!("over k, reported as a fraction of t_1. Median of 3 interleaved repetitions.\n");
    let cases: &[(&str, usize, usize, usize)] =
        &[("digits-mlp-debug.toml", 64, 120, 20), ("tiny-gpt-debug.toml", 32, 60, 10)];
    let ks = [1usize, 2, 4, 8];
    let mut rows = Vec::new();
    for &(name, eff, steps, warm) in cases {
        let mut times = vec![Vec::new(); ks.len()];
        let data = data_for(&shipped(name, &[]));
        for rep in 0..3 {
            for j in 0..ks.len() {
                let i = (j + rep) % ks.len();
                let k = ks[i];
                let r = shipped(
                    name,
                    &with(
                        base_sets(steps),
                        &sets(&[
                            &format!("training.effective_batch={eff}"),
                            &format!("micro_batch.initial={}", eff / k),
                            "micro_batch.grow_after=1000000",
                        ]),
                    ),
                );
                times[i].push(oomph_step::<Fx>(&r, &data, warm));
            }
        }
        let t: Vec<f64> = times.iter().map(|v| median(v)).collect();
        let kx: Vec<f64> = ks.iter().map(|&k| k as f64).collect();
        let (mk, mt) = (kx.iter().sum::<f64>() / kx.len() as f64, t.iter().sum::<f64>() / t.len() as f64);
        let slope = kx.iter().zip(&t).map(|(k, t)| (k - mk) * (t - mt)).sum::<f64>()
            / kx.iter().map(|k| (k - mk).powi(2)).sum::<f64>();
        let mut row = vec![name.trim_end_matches(".toml").into(), eff.to_string()];
        for ti in &t[1..] {
            row.push(format!("{:.2}", ti / t[0]));
        }
        row.push(format!("{:.3}", slope / t[0]));
        row.push(format!("{:.0} µs", t[0] * 1e6));
        rows.push(row);
    }
    table(
        &["model", "effective", "t_2 / t_1", "t_4 / t_1", "t_8 / t_1", "per-chunk cost c / t_1", "t_1 (indicative)"],
        &rows,
    );
}

// ---------------------------------------------------------------------------------------

fn recovery() {
    println!("## Recovery cost: time lost per in-process OOM\n");
    println!("Simulated OOMs (`[faults]`) take the same recovery path as real ones. Time lost = wall time");
    println!("of a window of steps in the faulted run minus the same window in a clean control run at the");
    println!("final micro-batch, divided by the OOMs, in units of the median step time at the final");
    println!("micro-batch. `discovery`: capacity simulated below the effective batch, OOMs at the first");
    println!("chunk's forward of step 1 (window: steps 1-10). `mid-run`: one OOM injected in the backward");
    println!("pass of step 20 at micro = effective (a whole forward is lost; window: steps 20-30). With");
    println!("`checkpoint.on_oom = true` (the default) a checkpoint follows the OOM step; `trainer's own` is");
    println!("the run's `recovery_s` (failed attempts and cleanup only). Median of 5 interleaved pairs.\n");
    struct Case {
        name: &'static str,
        eff: usize,
        scenario: &'static str,
        faults: Vec<String>,
        final_micro: usize,
        window: (usize, usize),
    }
    let mut cases = Vec::new();
    for (name, eff, cap) in [("digits-mlp-debug.toml", 64usize, 12usize), ("tiny-gpt-debug.toml", 32, 5)] {
        let mut m = eff;
        while m > cap {
            m = max_chunk(eff, m.div_ceil(2));
        }
        cases.push(Case {
            name,
            eff,
            scenario: "discovery",
            faults: sets(&[&format!("faults.simulate_memory_samples={cap}")]),
            final_micro: m,
            window: (0, 10),
        });
        cases.push(Case {
            name,
            eff,
            scenario: "mid-run",
            faults: sets(&[r#"faults.oom_at=[{step=20, phase="backward"}]"#]),
            final_micro: max_chunk(eff, eff.div_ceil(2)),
            window: (19, 30),
        });
    }
    let mut rows = Vec::new();
    for c in &cases {
        let data = data_for(&shipped(c.name, &[]));
        for on_oom in [true, false] {
            let common = with(
                base_sets(40),
                &sets(&[
                    &format!("training.effective_batch={}", c.eff),
                    "micro_batch.grow_after=1000000",
                    &format!("checkpoint.on_oom={on_oom}"),
                    // Evaluation at the final micro-batch, so that it never runs out of memory.
                    &format!("training.eval_batch={}", c.final_micro),
                ]),
            );
            let faulty = shipped(
                c.name,
                &with(with(common.clone(), &c.faults), &sets(&[&format!("micro_batch.initial={}", c.eff)])),
            );
            let clean = shipped(c.name, &with(common, &sets(&[&format!("micro_batch.initial={}", c.final_micro)])));
            let wall = |o: &RunOut, s: usize| if s == 0 { 0.0 } else { o.steps[s - 1].wall_s };
            let (mut lost, mut own, mut ooms) = (Vec::new(), Vec::new(), 0);
            for rep in 0..5 {
                let (f, k) = if rep % 2 == 0 {
                    let f = train_builtin::<Fx>(faulty.clone(), &data);
                    (f, train_builtin::<Fx>(clean.clone(), &data))
                } else {
                    let k = train_builtin::<Fx>(clean.clone(), &data);
                    (train_builtin::<Fx>(faulty.clone(), &data), k)
                };
                assert_eq!(f.summary.micro_batch_final, c.final_micro, "{} {}", c.name, c.scenario);
                ooms = f.summary.oom_events;
                let step = median(&k.step_times(2));
                let (a, b) = c.window;
                let wf = wall(&f, b) - wall(&f, a);
                let wk = wall(&k, b) - wall(&k, a);
                lost.push((wf - wk) / ooms as f64 / step);
                own.push(f.summary.recovery_s / ooms as f64 / step);
            }
            rows.push(vec![
                c.name.trim_end_matches(".toml").into(),
                c.scenario.into(),
                format!("{} -> {}", c.eff, c.final_micro),
                ooms.to_string(),
                on_oom.to_string(),
                spread(&lost, 2),
                format!("{:.2}", median(&own)),
            ]);
        }
    }
    table(
        &[
            "model",
            "scenario",
            "micro",
            "OOMs",
            "checkpoint.on_oom",
            "lost per OOM / step (median [min..max])",
            "trainer's own recovery_s per OOM / step",
        ],
        &rows,
    );
}

// ---------------------------------------------------------------------------------------

/// Pids of `pid`'s direct children (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid =
            stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            v.push(child);
        }
    }
    v
}

fn kill(pid: u32) {
    // SAFETY: kill(2) on a process this benchmark started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    false
}

fn restart() {
    println!("## Restart cost: a worker's death to its first completed step\n");
    println!("The real binary (`target/release/oomph`), supervised, checkpoints every 10 steps: SIGKILL of");
    println!("the worker (what the kernel's OOM killer sends) as soon as the step-10 checkpoint is complete.");
    println!("Times from the kill, in units of the median step time of the same run before its first");
    println!("checkpoint: until the new worker has resumed (`resume` event: the supervisor noticing the");
    println!("death, process start, data load, checkpoint verification and load), and until its first");
    println!("completed step. Steps between the newest checkpoint and the kill are redone on top of that.");
    println!("Median [min..max] of 3 runs.\n");
    let bin = env!("CARGO_BIN_EXE_oomph");
    let cases: &[(&str, &str, &[&str])] = &[
        ("digits-mlp", "digits-mlp.toml", &[]),
        ("tiny-gpt", "tiny-gpt.toml", &[]),
        (
            "gpt 4x256",
            "tiny-gpt.toml",
            &["model.d_model=256", "model.n_layer=4", "model.n_head=8", "training.effective_batch=8"],
        ),
    ];
    let mut rows = Vec::new();
    for &(label, file, extra) in cases {
        let (mut to_resume, mut to_step, mut size, mut redone, mut abs) =
            (Vec::new(), Vec::new(), 0, Vec::new(), Vec::new());
        for _ in 0..3 {
            let d = tempfile::tempdir().unwrap();
            let run = d.path().join("run");
            let mut args: Vec<String> = vec![
                "train".into(),
                format!("configs/{file}"),
                "--run-dir".into(),
                run.display().to_string(),
                "--plain".into(),
            ];
            for s in with(
                sets(&[
                    "training.steps=100000",
                    "training.eval_every=0",
                    "checkpoint.every=10",
                    "checkpoint.keep=2",
                    "run.log_every=100000",
                    "micro_batch.grow_after=1000000",
                ]),
                &sets(extra),
            ) {
                args.push("--set".into());
                args.push(s);
            }
            let mut sup = Command::new(bin)
                .args(&args)
                .current_dir(root())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let metrics = run.join("metrics.jsonl");
            let events = run.join("events.jsonl");
            let steps = || step_lines(&metrics);
            // Kill once the step-10 checkpoint is complete (its manifest exists).
            let manifest = run.join("checkpoints/step-10/manifest.json");
            let ok = wait_for(Duration::from_secs(120), || manifest.is_file());
            assert!(ok, "{label}: the run did not checkpoint step 10");
            let workers = children(sup.id());
            assert_eq!(workers.len(), 1, "{label}: expected one worker under the supervisor");
            kill(workers[0]);
            let t0 = Instant::now();
            let last = steps().last().map(|s| s.step).unwrap_or(0);
            let resumed = wait_for(Duration::from_secs(120), || {
                event_lines(&events).iter().any(|e| matches!(e.event, Event::Resume { .. }))
            });
            let t1 = t0.elapsed().as_secs_f64();
            let from = event_lines(&events)
                .iter()
                .find(|e| matches!(e.event, Event::Resume { .. }))
                .map(|e| e.step)
                .unwrap_or(0);
            let stepped = wait_for(Duration::from_secs(120), || steps().iter().any(|s| s.step == from + 1));
            let t2 = t0.elapsed().as_secs_f64();
            let new_workers = children(sup.id());
            kill(sup.id());
            for w in new_workers {
                kill(w);
            }
            let _ = sup.wait();
            assert!(resumed && stepped && from >= 10, "{label}: no resume seen (from {from})");
            // The unit: steps 2-10, before any checkpoint was written.
            let before: Vec<StepRecord> = steps().into_iter().filter(|s| s.step <= 10).collect();
            let step = median(&step_times(&before, 1));
            to_resume.push(t1 / step);
            to_step.push(t2 / step);
            redone.push(last.saturating_sub(from) as f64);
            abs.push(t2);
            size = dir_bytes(&run.join("checkpoints").join(format!("step-{from}")));
        }
        rows.push(vec![
            label.into(),
            mib(size),
            spread(&to_resume, 0),
            spread(&to_step, 0),
            format!("{:.0}", median(&redone)),
            format!("{:.2} s", median(&abs)),
        ]);
    }
    table(
        &[
            "model",
            "checkpoint size",
            "kill -> resumed (steps)",
            "kill -> first step done (steps)",
            "steps redone (at least)",
            "kill -> first step (indicative)",
        ],
        &rows,
    );
}

// ---------------------------------------------------------------------------------------

#[derive(Clone)]
enum Capacity {
    Fixed(usize),
    /// Capacity `high`, dropping to `low` from step `from` to step `to`.
    Dip {
        high: usize,
        low: usize,
        from: usize,
        to: usize,
    },
}

impl Capacity {
    fn sets(&self) -> Vec<String> {
        match *self {
            Capacity::Fixed(c) => sets(&[&format!("faults.simulate_memory_samples={c}")]),
            Capacity::Dip { high, low, from, to } => sets(&[
                &format!("faults.simulate_memory_samples={high}"),
                &format!(
                    "faults.simulate_memory_changes=[{{step={from}, samples={low}}}, {{step={to}, samples={high}}}]"
                ),
            ]),
        }
    }

    fn min(&self) -> usize {
        match *self {
            Capacity::Fixed(c) => c,
            Capacity::Dip { low, .. } => low,
        }
    }

    fn describe(&self) -> String {
        match *self {
            Capacity::Fixed(c) => format!("{c}"),
            Capacity::Dip { high, low, from, to } => format!("{high}, {low} in steps {from}-{}, {high} again", to - 1),
        }
    }
}

fn adaptive() {
    const STEPS: usize = 200;
    println!("## Adaptive micro-batch vs the hindsight oracle\n");
    println!("Simulated capacity (`faults.simulate_memory_samples`, in samples per micro-batch), gpt");
    println!("(tiny-gpt-debug model), {STEPS}-step runs, throughput = samples / wall time of the training loop");
    println!("(every OOM, retry and on-OOM checkpoint included). adaptive: `micro_batch.initial` = effective,");
    println!("default `grow_after` = 50 (and a column with 10). halve-only: the same with `grow_after` = 1000000, i.e. shrink by");
    println!("halving and never grow (what Composer does). oracle: the best fixed micro-batch chosen with");
    println!("hindsight (the fastest of the two largest achievable sizes that fit the lowest capacity, run");
    println!("from the start with no OOM). Median of 3 interleaved repetitions.\n");
    let cases = [
        (64usize, Capacity::Fixed(12)),
        (96, Capacity::Fixed(40)),
        (96, Capacity::Fixed(17)),
        (128, Capacity::Fixed(48)),
        (64, Capacity::Dip { high: 64, low: 12, from: 40, to: 90 }),
    ];
    let data = data_for(&shipped("tiny-gpt-debug.toml", &[]));
    let mut rows = Vec::new();
    let mut dip_note = String::new();
    for (eff, cap) in &cases {
        let eff = *eff;
        // The final evaluation (outside the timed loop) at a size that fits, so that OOM counts
        // are the training loop's.
        let base = with(
            base_sets(STEPS),
            &with(
                sets(&[&format!("training.effective_batch={eff}"), &format!("training.eval_batch={}", cap.min())]),
                &cap.sets(),
            ),
        );
        let fits: Vec<usize> = achievable_sizes(eff).into_iter().filter(|&s| s <= cap.min()).collect();
        let mut cands: Vec<usize> = fits.iter().rev().take(2).copied().collect();
        cands.sort_unstable();
        let adaptive = shipped(
            "tiny-gpt-debug.toml",
            &with(base.clone(), &sets(&[&format!("micro_batch.initial={eff}"), "micro_batch.grow_after=50"])),
        );
        let halve = shipped(
            "tiny-gpt-debug.toml",
            &with(base.clone(), &sets(&[&format!("micro_batch.initial={eff}"), "micro_batch.grow_after=1000000"])),
        );
        let fixed = |m: usize| {
            shipped(
                "tiny-gpt-debug.toml",
                &with(base.clone(), &sets(&[&format!("micro_batch.initial={m}"), "micro_batch.grow_after=1000000"])),
            )
        };
        let quick = shipped(
            "tiny-gpt-debug.toml",
            &with(base.clone(), &sets(&[&format!("micro_batch.initial={eff}"), "micro_batch.grow_after=10"])),
        );
        let mut recipes = vec![adaptive, halve, quick];
        recipes.extend(cands.iter().map(|&m| fixed(m)));
        let mut thr = vec![Vec::new(); recipes.len()];
        let mut info = vec![(0usize, 0usize, Vec::new()); 3];
        // Step times at the full effective batch, for the phase oracle of the dip case.
        let mut full_step = Vec::new();
        for rep in 0..3 {
            for j in 0..recipes.len() {
                let i = (j + rep) % recipes.len();
                let out = train_builtin::<Fx>(recipes[i].clone(), &data);
                assert_eq!(out.steps.len(), STEPS);
                thr[i].push((STEPS * eff) as f64 / out.loop_s());
                if i < 3 {
                    info[i] = (
                        out.summary.oom_events,
                        out.summary.micro_batch_final,
                        out.summary.micro_batch_history.clone(),
                    );
                }
            }
            if let Capacity::Dip { high, .. } = cap {
                let r = shipped(
                    "tiny-gpt-debug.toml",
                    &with(
                        base_sets(60),
                        &sets(&[&format!("training.effective_batch={eff}"), &format!("micro_batch.initial={high}")]),
                    ),
                );
                full_step.push(oomph_step::<Fx>(&r, &data, 5));
            }
        }
        let med: Vec<f64> = thr.iter().map(|v| median(v)).collect();
        let (best, oracle) =
            cands.iter().zip(&med[3..]).fold((0, 0.0), |acc, (&m, &t)| if t > acc.1 { (m, t) } else { acc });
        let hist = |h: &[usize]| {
            let mut h: Vec<usize> = h.to_vec();
            h.dedup();
            h.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(" → ")
        };
        rows.push(vec![
            eff.to_string(),
            cap.describe(),
            format!("{best} x {}", eff.div_ceil(best)),
            format!("{:.3}", med[0] / oracle),
            format!("{} ({} OOMs)", hist(&info[0].2), info[0].0),
            format!("{:.3}", med[2] / oracle),
            format!("{} ({} OOMs)", hist(&info[2].2), info[2].0),
            format!("{:.3}", med[1] / oracle),
            format!("{} ({} OOMs)", hist(&info[1].2), info[1].0),
        ]);
        if let Capacity::Dip { low, from, to, .. } = cap {
            // Phase oracle: the best size for each phase with hindsight, no switching cost.
            let t_full = median(&full_step);
            let t_low = eff as f64 / oracle;
            let total = (from - 1) as f64 * t_full + (to - from) as f64 * t_low + (STEPS + 1 - to) as f64 * t_full;
            let phase = (STEPS * eff) as f64 / total;
            dip_note = format!(
                "Dip case, against a *phase* oracle that runs {eff} x 1 while the capacity allows it and the best size under \
                 {low} during the dip, with no switching cost: adaptive {:.3}, adaptive with grow_after = 10 {:.3}, \
                 halve-only {:.3}.",
                med[0] / phase,
                med[2] / phase,
                med[1] / phase
            );
        }
    }
    table(
        &[
            "effective",
            "capacity (samples)",
            "oracle (micro x chunks)",
            "adaptive / oracle",
            "adaptive limits",
            "adaptive, grow_after = 10 / oracle",
            "its limits",
            "halve-only / oracle",
            "halve-only limits",
        ],
        &rows,
    );
    if !dip_note.is_empty() {
        println!("{dip_note}\n");
    }
}

// ---------------------------------------------------------------------------------------

struct Direct {
    params: usize,
    size: u64,
    step: f64,
    snapshot: f64,
    serialize: f64,
    write: f64,
    verify: f64,
    load: f64,
}

/// Checkpoint pieces measured directly, as the trainer does them: snapshot (handle copies,
/// on the training thread), serialisation and the atomic write (on the writer thread), and
/// resume (verify checksums, decode and load the records). Step time from `steps` steps.
fn direct<M>(model: M, r: &Recipe, data: &Splits, steps: usize) -> Direct
where
    M: AutodiffModule<Fx> + PlainLoss<Fx>,
    M::InnerModule: Objective<<Fx as AutodiffBackend>::InnerBackend>,
{
    let device = Default::default();
    let mut optim = Optim::<M, Fx>::new(&r.optimizer);
    let mut model = model;
    let feeds = Data::<Fx>::from_splits(data.clone());
    let feed = train_feed::<Fx, M>(&feeds);
    let mut sampler = Sampler::new(feed.len(), r.run.seed, true);
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let batch = feed.batch(&sampler.next_batch(r.training.effective_batch), &device);
        let loss = model.mean_loss(batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(r.optimizer.lr, model, grads);
        let _ = <Fx as Backend>::sync(&device);
        times.push(t.elapsed().as_secs_f64());
    }
    let step = median(&times[1..]);
    let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let t = Instant::now();
    let record = model.clone().into_record();
    let o = optim.clone();
    let snapshot = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let model_bytes = Recorder::<Fx>::record(&rec, record, ()).unwrap();
    let optim_bytes = o.to_bytes().unwrap();
    let serialize = t.elapsed().as_secs_f64();
    drop(o);
    let state = TrainState {
        step: steps,
        samples_seen: 0,
        cursor: sampler.cursor(),
        policy: Default::default(),
        eval_batch: 1,
        seed: r.run.seed,
        recipe_fingerprint: oomph::recipe::fingerprint(r),
        last_loss: None,
        oom_events: 0,
        recovery_s: 0.0,
        wall_s: 0.0,
        restarts: 0,
        resumes: 0,
        reason: "bench".into(),
        data: None,
        total_steps: Some(steps),
        nonfinite_steps: 0,
        nonfinite_run: 0,
        ranks: 1,
    };
    let payload = Payload {
        step: steps,
        files: vec![
            ("model.mpk".into(), model_bytes),
            ("optim.mpk".into(), optim_bytes),
            ("recipe.toml".into(), oomph::recipe::to_toml_string(r).into_bytes()),
            ("state.json".into(), serde_json::to_vec_pretty(&state).unwrap()),
        ],
        simulate_full_disk: false,
    };
    let d = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let dir = checkpoint::write(&d.path().join("checkpoints"), &payload, 2).unwrap();
    let write = t.elapsed().as_secs_f64();
    drop(payload);
    let size = dir_bytes(&dir);
    let t = Instant::now();
    let v = checkpoint::verify(&dir).unwrap();
    let verify = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loaded: <M as Module<Fx>>::Record =
        Recorder::<Fx>::load(&rec, v.file("model.mpk").unwrap().to_vec(), &device).unwrap();
    let m2 = model.clone().load_record(loaded);
    let o2 = Optim::<M, Fx>::new(&r.optimizer).load_bytes(v.file("optim.mpk").unwrap().to_vec(), &device).unwrap();
    let load = t.elapsed().as_secs_f64();
    let params = m2.num_params();
    drop((m2, o2, v));
    Direct { params, size, step, snapshot, serialize, write, verify, load }
}

fn checkpoint_cost() {
    println!("## Checkpoint cost\n");
    println!("Pieces, in units of the model's own training step (AdamW, full-precision records, model +");
    println!("optimizer moments): the snapshot the training thread takes (handle copies), serialisation and");
    println!("the atomic fsynced write (both on the background writer thread), and resume (verify every");
    println!("SHA-256, decode, load model and optimizer). Median of 3 for the shipped models, 1 for big.\n");
    let mut rows = Vec::new();
    let mut loop_rows = Vec::new();
    let shipped_cases: &[(&str, &str)] = &[("digits-mlp", "digits-mlp.toml"), ("tiny-gpt", "tiny-gpt.toml")];
    for &(label, file) in shipped_cases {
        let r = shipped(file, &[]);
        let data = data_for(&r);
        let ds: Vec<Direct> = (0..3)
            .map(|_| {
                let device = Default::default();
                match build::<Fx>(&r, &data, &device) {
                    Builtins::Mlp(m) => direct(m, &r, &data, 12),
                    Builtins::Gpt(m) => direct(m, &r, &data, 6),
                }
            })
            .collect();
        rows.push(direct_row(label, &ds));
        let (steps, every) = if label == "digits-mlp" { (301, 20) } else { (31, 5) };
        loop_rows.push(in_loop::<Fx>(
            label,
            &{
                let mut reg = Registry::<Fx>::new();
                <oomph::models::Builtin as Models>::register(&mut reg);
                reg
            },
            file,
            None,
            steps,
            every,
            3,
        ));
    }
    // The >= 100 M parameter model.
    let (r, data, big) = big_setup(&[]);
    let d = direct(big, &r, &data, 4);
    rows.push(direct_row("big (synthetic)", &[d]));
    loop_rows.push(in_loop::<Fx>("big (synthetic)", &big_registry(), "", Some(BIG), 8, 2, 1));
    table(
        &[
            "model",
            "parameters",
            "checkpoint size",
            "snapshot on the loop / step",
            "serialise / step",
            "write + fsync / step",
            "resume: verify / step",
            "resume: load / step",
        ],
        &rows,
    );
    println!("Effect on the training loop: an in-process run with checkpoints every k steps, against the");
    println!("median step time of the same run without checkpoints (interleaved). Per checkpoint: the");
    println!("excess wall time of the k steps that follow it (the snapshot, any wait for the previous");
    println!("write, the writer thread competing for the CPUs), in steps, median [min..max] over all");
    println!("checkpoints of all repetitions. The trainer's own `stall_s` is the wait for the previous");
    println!("write alone, averaged.\n");
    table(
        &[
            "model",
            "every k",
            "checkpoints",
            "loop time added per checkpoint / step",
            "trainer's stall_s (wait) / step",
        ],
        &loop_rows,
    );
}

fn direct_row(label: &str, ds: &[Direct]) -> Vec<String> {
    let f = |g: fn(&Direct) -> f64| {
        let v: Vec<f64> = ds.iter().map(|d| g(d) / d.step).collect();
        let m = median(&v);
        if m < 0.01 {
            format!("{m:.1e}")
        } else {
            format!("{m:.2}")
        }
    };
    vec![
        label.into(),
        if ds[0].params >= 1_000_000 {
            format!("{:.1} M", ds[0].params as f64 / 1e6)
        } else {
            format!("{:.1} k", ds[0].params as f64 / 1e3)
        },
        mib(ds[0].size),
        f(|d| d.snapshot),
        f(|d| d.serialize),
        f(|d| d.write),
        f(|d| d.verify),
        f(|d| d.load),
    ]
}

fn in_loop<B: AutodiffBackend>(
    label: &str,
    reg: &Registry<B>,
    file: &str,
    text: Option<&str>,
    steps: usize,
    every: usize,
    reps: usize,
) -> Vec<String> {
    let recipe = |every: usize| {
        let s = sets(&[
            &format!("training.steps={steps}"),
            "training.eval_every=0",
            &format!("checkpoint.every={every}"),
            "checkpoint.keep=2",
        ]);
        match text {
            Some(t) => recipe_text(t, &s),
            None => shipped(file, &s),
        }
    };
    let (with_ck, without) = (recipe(every), recipe(0));
    let data = if text.is_some() {
        oomph::data::load(&with_ck.data, with_ck.run.seed, None).unwrap()
    } else {
        data_for(&with_ck)
    };
    let n = (steps - 1) / every;
    let (mut v, mut own) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let (a, b) = if rep % 2 == 0 {
            let a = train_with(reg, with_ck.clone(), &data);
            (a, train_with(reg, without.clone(), &data))
        } else {
            let b = train_with(reg, without.clone(), &data);
            (train_with(reg, with_ck.clone(), &data), b)
        };
        let step = median(&b.step_times(1));
        // Per checkpoint (written after step k): the excess over the reference step time of
        // the steps k+1..=k+every, which hold the snapshot, any wait for the previous write
        // and the writer thread's competition for the CPUs.
        for k in (every..steps).step_by(every) {
            let excess: f64 = a
                .steps
                .windows(2)
                .filter(|w| w[1].step > k && w[1].step <= k + every)
                .map(|w| w[1].wall_s - w[0].wall_s - step)
                .sum();
            v.push(excess / step);
        }
        // The trainer's own account, where its checkpoint events carry it (`stall_s`).
        let stalls: Vec<f64> = a
            .events
            .iter()
            .filter(|e| e.step < steps)
            .filter_map(|e| match e.event {
                Event::Checkpoint { stall_s, .. } => Some(stall_s),
                _ => None,
            })
            .collect();
        if !stalls.is_empty() {
            own.push(stalls.iter().sum::<f64>() / stalls.len() as f64 / step);
        }
    }
    let own = if own.is_empty() { "–".to_string() } else { format!("{:.2}", median(&own)) };
    vec![label.into(), every.to_string(), (n * reps).to_string(), spread(&v, 2), own]
}
