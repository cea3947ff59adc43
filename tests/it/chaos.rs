//! The chaos test: from a seed, one run is driven through a random schedule of whole-tree
//! SIGKILLs (some while a checkpoint is being written, asserted), simulated OOMs in every
//! phase, a worker death, a non-finite step and a failed checkpoint write, and is resumed with
//! `--resume auto` (the default) after each. It must end within the accumulation tolerance of
//! the undisturbed run (the OOMs change the split) and bit for bit as the run that met the
//! same faults without the kills.
//!
//! `OOMPH_CHAOS_SEED` picks another schedule; `OOMPH_CHAOS_KILLS` (default 6) sets how many
//! kills to attempt, so `OOMPH_CHAOS_KILLS=60 cargo test --release --test it chaos` is a
//! longer soak.

use crate::accumulation::TOL;
use crate::util::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// The disturbed run: an MLP big enough that a checkpoint write takes a moment, a cosine
/// schedule, checkpoints every [`EVERY`] steps.
fn chaos_recipe(steps: usize, nan: usize) -> TestRecipe {
    TestRecipe::mlp()
        .set("run.seed", 13)
        .set("model.hidden", [1024, 256])
        // A smooth activation: with ReLU, the float-order differences of another split flip a
        // few units on or off and grow over hundreds of steps (to ~1e-3 here); with GELU they
        // stay ~1e-7.
        .set("model.activation", "gelu")
        .synthetic(2000, 32, 5)
        .adamw(0.003)
        .cosine(10)
        .set("training.steps", steps)
        .set("training.eval_every", 25)
        .set("micro_batch.initial", 32)
        .set("micro_batch.grow_after", 100000)
        .set("checkpoint.every", EVERY)
        .set("checkpoint.keep", 2)
        .set("faults.nan_at", vec![nan as i64])
}

const EVERY: usize = 2;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Polls a launch may spend waiting for the moment of its kill (a checkpoint write in flight,
/// or the step it is due at) before the test fails.
const KILL_POLLS: usize = 100_000;

/// The directory a checkpoint of `step` is written into before it counts.
fn tmp_dir(run: &Path, step: usize) -> std::path::PathBuf {
    run.join("checkpoints").join(format!("{}.tmp", oomph::train::checkpoint::dir_name(step)))
}

/// The step whose checkpoint a worker for which `ours` holds is writing under `run`: its
/// `current.json` names the write in flight (step N) and `step-N.tmp` exists. A finished write
/// renamed `step-N.tmp` away and a failed one removed it, so a leftover of an earlier killed
/// worker counts only while this worker's own write of that step is in flight.
fn writing(run: &Path, ours: impl Fn(u32) -> bool) -> Option<usize> {
    let c = oomph::train::current::read(&run.join("current.json"))?;
    let step = c.checkpoint_step?;
    (ours(c.pid) && tmp_dir(run, step).is_dir()).then_some(step)
}

/// One kill of the whole tree.
struct Kill {
    /// Steps completed when it landed.
    completed: usize,
    /// The newest complete checkpoint it left (what the next worker resumes from).
    newest: usize,
    /// Whether a checkpoint write was in flight or pending (the next one waits for it).
    writing: bool,
    /// Whether it was aimed at a checkpoint write.
    aimed: bool,
    /// The checkpoint write it cut short, seen on disk after the kill: the write in flight
    /// when the tree was stopped left its `.tmp` directory and never became a checkpoint.
    interrupted: Option<usize>,
}

#[test]
fn chaos_from_a_seed_ends_as_the_undisturbed_run() {
    let seed = env_or("OOMPH_CHAOS_SEED", 0x2545_F491_4F6C_DD1D);
    let kills_wanted = env_or("OOMPH_CHAOS_KILLS", 6) as usize;
    let mut rng = Rng(seed.max(1));
    // Long enough that every kill lands before the run ends.
    let steps = 200.max(40 * kills_wanted);
    let nan = rng.step(5, steps - 5);
    let f = Fixture::new(&chaos_recipe(steps, nan));
    // The undisturbed run skips the same non-finite step: it is part of what was trained.
    let reference = f.reference("reference", &[]);

    let phases = ["forward", "backward", "optimizer", "eval"];
    let ooms: Vec<String> = phases
        .iter()
        .map(|p| {
            // Evaluation runs every 25 steps: an eval fault needs such a step.
            let s = if *p == "eval" { 25 * rng.step(1, steps / 25) } else { rng.step(2, steps) };
            format!("{{step={s}, phase=\"{p}\"}}")
        })
        .collect();
    let oom_arg = format!("faults.oom_at=[{}]", ooms.join(", "));
    let mut args: Vec<String> = vec!["--set".into(), oom_arg];
    eprintln!("chaos seed {seed:#x}: nan at {nan}, ooms {ooms:?}");

    let run = f.run("run");
    let (mut kills, mut disk_failures) = (0usize, 0usize);
    let mut deaths: Vec<Kill> = Vec::new();
    // Each launch is killed, stopped by the full disk (once) or finishes the run.
    let max_launches = kills_wanted + 3;
    for launch in 1.. {
        assert!(launch <= max_launches, "the chaos run does not finish in {max_launches} launches");
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = f.cmd("run", &argv).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let supervisor = child.id();
        // A random kill lands in a random step up to `steps / (kills_wanted + 1)` past the newest
        // checkpoint (where this launch resumes): a moment set by the run's progress, not by the
        // clock. The random kills (every other one) gain at most half the run together and an
        // aimed one at most the next write, so every kill lands before the run ends.
        let target_write = kills % 2 == 0;
        let newest = oomph::train::checkpoint::list(&run.join("checkpoints")).unwrap().first().map_or(0, |c| c.0);
        let at = newest + rng.step(1, steps / (kills_wanted + 1));
        // Wait for the moment of the kill, unless the worker ends first or no kill is left: a
        // random step, or, for a targeted kill, a checkpoint write in progress, checked again
        // with the whole process tree stopped so that the write cannot finish in between.
        let mut frozen = None;
        let mut polls = 0;
        while kills < kills_wanted && child.try_wait().unwrap().is_none() {
            if target_write {
                if writing(&run, |pid| pid == supervisor || parent(pid) == Some(supervisor)).is_some() {
                    let tree = freeze(supervisor);
                    if writing(&run, |pid| tree.contains(&pid)).is_some() {
                        frozen = Some(tree);
                        break;
                    }
                    thaw(&tree);
                }
            } else if worker_position(&run, supervisor).is_some_and(|c| c.step >= at) {
                frozen = Some(freeze(supervisor));
                break;
            }
            polls += 1;
            assert!(polls < KILL_POLLS, "kill {} was not due in {KILL_POLLS} polls", kills + 1);
            std::thread::sleep(Duration::from_micros(300));
        }
        // A stopped child is not reported by `try_wait`: one that is reported has ended.
        if let (Some(tree), Some(_)) = (&frozen, child.try_wait().unwrap()) {
            thaw(tree);
            frozen = None;
        }
        if let Some(tree) = frozen {
            // Nothing in the tree runs: what is on disk now is what the kill leaves.
            let in_write = writing(&run, |pid| tree.contains(&pid));
            let current = oomph::train::current::read(&run.join("current.json"));
            kill_tree(supervisor);
            let _ = child.wait();
            kills += 1;
            let completed = current.as_ref().map(|c| c.step.saturating_sub(1)).unwrap_or(0);
            let pending = current.as_ref().is_some_and(|c| c.checkpoint_step.is_some());
            // Every checkpoint that counts is complete and verifiable, whatever the moment.
            let counted = oomph::train::checkpoint::list(&run.join("checkpoints")).unwrap();
            for (_, dir) in &counted {
                oomph::train::checkpoint::verify(dir)
                    .unwrap_or_else(|e| panic!("a counted checkpoint is damaged: {e}"));
            }
            let interrupted =
                in_write.filter(|&s| tmp_dir(&run, s).is_dir() && counted.iter().all(|(step, _)| *step != s));
            // What the next worker resumes from: the newest of them.
            let newest = counted.first().map(|c| c.0).unwrap_or(0);
            deaths.push(Kill {
                completed,
                newest,
                writing: in_write.is_some() || pending,
                aimed: target_write,
                interrupted,
            });
            if kills == kills_wanted {
                // Then, with no kill left to pre-empt them, a worker death and a full disk
                // ahead of where the run resumes.
                let die = newest + 2 + rng.step(0, 4);
                let disk = EVERY * (die / EVERY + 1 + rng.step(0, 3));
                assert!(disk < steps, "the kills left too few steps for the last faults");
                eprintln!("then a worker death at {die} and a full disk at {disk}");
                args.extend([
                    "--set".into(),
                    format!("faults.die_at=[{{step={die}, phase=\"forward\"}}]"),
                    "--set".into(),
                    format!("faults.disk_full_at=[{disk}]"),
                ]);
            }
            continue;
        }
        let o = child.wait_with_output().unwrap();
        let all = text(&o);
        if o.status.success() {
            break;
        }
        // The simulated full disk stops the run; the user frees space and runs it again.
        assert!(all.contains("No space left on device"), "unexpected failure: {all}");
        disk_failures += 1;
    }
    let aimed = deaths.iter().filter(|k| k.aimed).count();
    let mid_write = deaths.iter().filter(|k| k.interrupted.is_some()).count();
    eprintln!("{kills} kills ({mid_write} during a checkpoint write, {aimed} aimed at one), {disk_failures} full disk");
    assert_eq!(kills, kills_wanted, "the run finished before every kill landed");
    // Kills landed during a checkpoint write, and every aimed one did: the write it found in
    // flight with the tree stopped was cut short (its .tmp left, no checkpoint made of it).
    assert!(
        aimed >= 1 && mid_write >= 1,
        "{mid_write} of {kills} kills landed during a checkpoint write ({aimed} aimed)"
    );
    for (i, k) in deaths.iter().enumerate().filter(|(_, k)| k.aimed) {
        assert!(k.interrupted.is_some(), "kill {} was aimed at a checkpoint write but cut none short", i + 1);
    }
    assert_eq!(disk_failures, 1, "the full disk stopped the run once");

    let s = summary(&run);
    assert_eq!(s.steps, steps);
    assert_eq!(s.samples_seen, (steps * 64) as u64, "every step consumed exactly its effective batch");
    assert_eq!(s.nonfinite_steps, 1);
    assert_eq!(step_lines(&run), (1..=steps as u64).collect::<Vec<_>>(), "one metrics line per step");
    assert_no_tmp(&run);
    // The OOMs changed the split: equal to the undisturbed run within the accumulation
    // tolerance...
    let diff = max_param_diff(&reference, &run);
    assert!(diff < TOL, "the chaos run differs from the undisturbed one by {diff:e}");
    // ...and kills and resumes changed nothing: bit for bit the run that met the same faults
    // without being killed.
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = f.train("faults-only", &argv);
    assert!(text(&first).contains("No space left on device"), "{}", text(&first));
    let o = f.train("faults-only", &argv);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_bits(&f.run("faults-only"), &run, "the chaos run and the run that met the same faults unkilled");
    // Work lost per kill: at most the checkpoint interval, or twice it when the newest
    // checkpoint was still being written in the background (the next one waits for it).
    assert_eq!(events(&run, "restart").len(), 1, "the simulated worker death was restarted by the supervisor");
    for Kill { completed, newest, writing, .. } in &deaths {
        let lost = completed.saturating_sub(*newest);
        let bound = if *writing { 2 * EVERY } else { EVERY };
        assert!(
            lost <= bound,
            "a kill after step {completed} loses {lost} steps (newest checkpoint {newest}, bound {bound})"
        );
    }
}
