//! Several ranks (`[distributed]`, the `distributed` feature; `cargo test --features
//! distributed --test it distributed::`): ranks as threads of one process on the CPU, joined
//! through burn's collective. The global effective batch stays exact whatever the number of
//! ranks, an out-of-memory on one rank is every rank's, a failing rank stops every rank
//! promptly with its message, and a run resumes with another number of ranks.

use crate::accumulation::TOL;
use crate::util::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// No test waits on a stuck run: far below any collective deadline, far above a run's time.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd`, killing it (and failing) if it outlives [`LIMIT`].
fn bounded(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run oomph");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!("oomph did not end within {LIMIT:?} (a rank waits forever?):\n{}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn train(f: &Fixture, name: &str, args: &[&str]) -> Output {
    bounded(f.cmd(name, args))
}

#[test]
fn one_two_and_three_ranks_train_the_same_parameters() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    for ranks in ["2", "3"] {
        let name = format!("ranks{ranks}");
        // A deadline too far for a `Duration` is no deadline.
        let sets = ["--set", &format!("distributed.ranks={ranks}"), "--set", "distributed.timeout_s=1e30"];
        let o = train(&f, &name, &[&["--no-supervise"][..], &sets].concat());
        assert!(o.status.success(), "{ranks} ranks: {}", text(&o));
        let run = f.run(&name);
        let d = max_param_diff(&one, &run);
        assert!(d < TOL, "1 vs {ranks} ranks: max |diff| {d:e}");
        let (a, b) = (summary(&one), summary(&run));
        assert_eq!(a.samples_seen, b.samples_seen, "the effective batch is global");
        let (la, lb) = (a.valid_loss.unwrap(), b.valid_loss.unwrap());
        assert!((la - lb).abs() < 1e-5, "valid loss {la} vs {lb}");
        // One metrics line per step and evaluation: rank 0 alone writes the run directory.
        assert_eq!(step_lines(&run), step_lines(&one), "{ranks} ranks");
        // The same numbers on every run: three ranks on one device are summed in rank order
        // (burn's collective leaves the order of their sum to a hash map).
        let again = format!("{name}-again");
        let o = train(&f, &again, &[&["--no-supervise"][..], &sets].concat());
        assert!(o.status.success(), "{}", text(&o));
        assert_same_bits(&run, &f.run(&again), &format!("{ranks} ranks, twice"));
    }
}

#[test]
fn ranks_with_shards_of_different_sizes_make_the_same_out_of_memory_decision() {
    // Shards of 3, 3 and 2 samples: two OOMs in step 2 take every rank from 3 to 2 to 1 (the
    // rank with 2 samples must not halve its own size, reach 1 first and give up).
    let f = Fixture::new(&TestRecipe::ranked().set("training.effective_batch", 8).set("micro_batch.initial", 8));
    let faults = "faults.oom_at=[{step=2, phase=\"forward\"}, {step=2, phase=\"forward\"}]";
    let one = f.reference("one", &["--set", faults]);
    let o = train(&f, "three", &["--no-supervise", "--set", "distributed.ranks=3", "--set", faults]);
    assert!(o.status.success(), "{}", text(&o));
    let run = f.run("three");
    assert_eq!(summary(&run).oom_events, 2, "{}", text(&o));
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "1 vs 3 ranks with OOMs: max |diff| {d:e}");
}

#[test]
fn when_every_rank_fails_alike_rank_0_reports_it() {
    // Every rank diverges at step 13; rank 0 alone knows the checkpoint of step 10 it wrote.
    let f = Fixture::new(&TestRecipe::ranked().set("checkpoint.every", 10).set("training.max_nonfinite_steps", 3));
    let o =
        train(&f, "nan", &["--no-supervise", "--set", "distributed.ranks=3", "--set", "faults.nan_at=[11, 12, 13]"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("step-10") && !t.contains("no checkpoint was written yet"), "{t}");
}

#[test]
fn a_rank_with_less_room_makes_every_rank_shrink_to_the_same_micro_batch() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    // Rank 0 has room for its whole shard of 32, rank 1 for 12 samples.
    let o = train(
        &f,
        "tight",
        &["--no-supervise", "--set", "distributed.ranks=2", "--set", "faults.simulate_memory_samples=[64, 12]"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let run = f.run("tight");
    let ooms = events(&run, "oom");
    assert!(!ooms.is_empty(), "rank 1 ran out of memory: {}", text(&o));
    let s = summary(&run);
    assert!(s.micro_batch_final <= 12, "every rank ends at most at rank 1's room: {}", s.micro_batch_final);
    let micro: Vec<u64> = step_records(&run).iter().map(|r| r["micro_batch"].as_u64().unwrap()).collect();
    assert!(micro.iter().all(|&m| m <= 12), "{micro:?}");
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "undisturbed 1 rank vs 2 ranks with a tight rank 1: max |diff| {d:e}");
}

#[test]
fn an_oom_on_one_rank_in_backward_or_in_the_update_is_retried_by_every_rank() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    let faults = "faults.oom_at=[{step=3, phase=\"backward\", rank=1}, {step=6, phase=\"optimizer\", rank=0}, \
                  {step=9, phase=\"forward\", rank=2}]";
    let o = train(&f, "ooms", &["--no-supervise", "--set", "distributed.ranks=3", "--set", faults]);
    assert!(o.status.success(), "{}", text(&o));
    let run = f.run("ooms");
    let steps: Vec<u64> = events(&run, "oom").iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [3, 6, 9], "one OOM event per fault, recorded once: {}", text(&o));
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "undisturbed 1 rank vs 3 ranks with OOMs: max |diff| {d:e}");
}

/// An out-of-memory is the rank's that raised it: no other rank's recovery boundary takes it
/// for its own (regression: the panics recorded on every thread were looked at by every
/// rank, so about one event in five named another rank, and the phase could be wrong).
#[test]
fn every_out_of_memory_event_names_the_rank_and_phase_it_happened_in() {
    let f = Fixture::new(&TestRecipe::ranked());
    // Every other step, the micro-batch growing back in between.
    let at: Vec<String> = (1..=15).map(|s| format!("{{step={}, phase=\"backward\", rank=2}}", 2 * s)).collect();
    let faults = format!("faults.oom_at=[{}]", at.join(", "));
    let args =
        ["--no-supervise", "--set", "distributed.ranks=3", "--set", "micro_batch.grow_after=1", "--set", &faults];
    let o = train(&f, "ooms", &args);
    assert!(o.status.success(), "{}", text(&o));
    let ooms = events(&f.run("ooms"), "oom");
    assert_eq!(ooms.len(), 15, "{ooms:?}");
    for e in &ooms {
        let (step, message) = (e["step"].as_u64().unwrap(), e["message"].as_str().unwrap());
        assert_eq!(e["phase"], "backward", "{e}");
        assert!(message.starts_with(&format!("rank 2 ran out of memory in backward of step {step};")), "{e}");
    }
}

#[test]
fn a_panic_on_one_rank_stops_every_rank_promptly_with_its_message() {
    let f = Fixture::new(&TestRecipe::ranked());
    // The deadline is far away: the ranks must stop because rank 1 failed, not because they
    // waited for it.
    let o = train(
        &f,
        "panic",
        &[
            "--no-supervise",
            "--set",
            "distributed.ranks=3",
            "--set",
            "distributed.timeout_s=3600",
            "--set",
            "faults.panic_at=[{step=4, phase=\"backward\", rank=1}]",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("rank 1") && t.contains("simulated model bug"), "{t}");
    assert!(!t.contains("waited"), "no rank waited for the deadline: {t}");
}

#[test]
fn a_run_checkpointed_with_two_ranks_resumes_with_one_or_three() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    for (name, ranks) in [("to1", "1"), ("to3", "3")] {
        // Two ranks until the worker dies in step 11 (a simulated memory death, no
        // supervisor): the newest checkpoint is step 4's or step 8's.
        let die = "faults.die_at=[{step=11, phase=\"forward\"}]";
        let o = train(&f, name, &["--no-supervise", "--set", "distributed.ranks=2", "--set", die]);
        assert!(!o.status.success(), "{}", text(&o));
        let o = train(&f, name, &["--no-supervise", "--set", &format!("distributed.ranks={ranks}")]);
        assert!(o.status.success(), "resumed with {ranks}: {}", text(&o));
        let run = f.run(name);
        assert_eq!(summary(&run).resumes, 1, "{}", text(&o));
        // The micro-batch was the shard of 2 ranks (32), not a memory bound: it becomes the
        // new shard.
        let last = step_records(&run).last().cloned().unwrap();
        let shard = 64usize.div_ceil(ranks.parse().unwrap()) as u64;
        assert_eq!(last["micro_batch"].as_u64(), Some(shard), "{}", text(&o));
        assert_eq!(summary(&run).samples_seen, summary(&one).samples_seen);
        let d = max_param_diff(&one, &run);
        assert!(d < TOL, "2 ranks then {ranks} vs 1 rank: max |diff| {d:e}");
    }
}

#[test]
fn a_worker_death_in_the_update_or_in_rank_0s_checkpoint_writer_is_restarted_as_such() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    // In the update on rank 1: the supervisor restarts at the same sizes, first update in place.
    let die = "faults.die_at=[{step=7, phase=\"optimizer\", rank=1}]";
    let o = train(&f, "update", &["--set", "distributed.ranks=2", "--set", die]);
    assert!(o.status.success(), "{}", text(&o));
    let run = f.run("update");
    let restarts = events(&run, "restart");
    assert_eq!(restarts.first().map(|e| e["phase"].clone()), Some("optimizer".into()), "{restarts:?}");
    assert!(max_param_diff(&one, &run) < TOL);
    // In rank 0's checkpoint writer: the other ranks' loops must not clear its death note (with
    // a backtrace setting that makes the death slower).
    let die = "faults.die_at=[{step=8, phase=\"checkpoint\"}]";
    let mut cmd = f.cmd("writer", &["--set", "distributed.ranks=2", "--set", die]);
    cmd.env("RUST_BACKTRACE", "1");
    let o = bounded(cmd);
    assert!(o.status.success(), "{}", text(&o));
    let run = f.run("writer");
    assert_eq!(summary(&run).restarts, 1, "{}", text(&o));
    assert!(max_param_diff(&one, &run) < TOL);
    // A checkpoint fault on a rank that writes no checkpoint is refused.
    let o = f.train(
        "never",
        &["--set", "distributed.ranks=2", "--set", "faults.die_at=[{step=8, phase=\"checkpoint\", rank=1}]"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("rank 0 alone"), "{}", text(&o));
}

/// A host allocation that fails on a follower in its backward pass, while rank 0 waits for it
/// in an agreement round with its update's phase entered, is a death in training: the
/// supervisor shrinks the micro-batch, twice (regression: it was taken for the update's, the
/// micro-batch was kept, and the second death stopped the run with exit 3).
#[test]
fn a_followers_death_in_its_backward_pass_shrinks_the_micro_batch() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    let die = "faults.die_at=[{step=5, phase=\"backward\", rank=1}, {step=5, phase=\"backward\", rank=1}]";
    let o = train(&f, "died", &["--set", "distributed.ranks=2", "--set", die]);
    assert!(o.status.success(), "{}", text(&o));
    let run = f.run("died");
    let restarts = events(&run, "restart");
    let seen: Vec<_> =
        restarts.iter().map(|e| (e["step"].clone(), e["phase"].clone(), e["micro_batch"].clone())).collect();
    assert_eq!(seen, [(5.into(), "train".into(), 32.into()), (5.into(), "train".into(), 16.into())], "{restarts:?}");
    assert!(max_param_diff(&one, &run) < TOL);
}

/// A rank that recovers from an allocation failure says so at once: another rank's abort that
/// is not a memory failure is then not taken for a memory death (regression: the note of rank
/// 1's survived failure stayed until the ranks agreed on it, and rank 2's abort meanwhile was
/// restarted with a smaller micro-batch).
#[test]
fn an_abort_on_one_rank_while_another_recovers_from_an_oom_is_not_a_memory_death() {
    let f = Fixture::new(&TestRecipe::ranked());
    let faults = [
        "--set",
        "distributed.ranks=3",
        "--set",
        "faults.oom_at=[{step=5, phase=\"forward\", rank=1}]",
        "--set",
        "faults.abort_at=[{step=5, phase=\"optimizer\", rank=2}]",
    ];
    let o = train(&f, "abort", &faults);
    assert_eq!(o.status.code(), Some(134), "{}", text(&o));
    assert!(text(&o).contains("which is not a memory failure"), "{}", text(&o));
    assert!(events(&f.run("abort"), "restart").is_empty());
}

#[test]
fn the_supervisor_restarts_every_rank_after_a_memory_death() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    let die = "faults.die_at=[{step=7, phase=\"backward\", rank=1}]";
    let o = train(&f, "died", &["--set", "distributed.ranks=2", "--set", die]);
    assert!(o.status.success(), "{}", text(&o));
    let run = f.run("died");
    assert_eq!(summary(&run).restarts, 1, "{}", text(&o));
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "restarted gang vs 1 rank: max |diff| {d:e}");
}
