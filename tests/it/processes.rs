//! Several processes, one rank each, as a launcher starts them (`torchrun --nproc-per-node 2
//! oomph train R`, `srun oomph train R`): here the variables torchrun sets, on localhost. The
//! ranks join over TCP; they need no cargo feature. The global effective batch stays exact, a
//! rank that fails or is killed stops every other rank at once, named, and the gang resumes
//! from rank 0's newest checkpoint.

use crate::accumulation::TOL;
use crate::util::*;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One rank's process, its output going to a file beside the run (a pipe nobody reads while
/// the rank trains could fill up and stall it).
struct Rank {
    child: Child,
    log: std::path::PathBuf,
}

/// Starts the `world` ranks of one launch of `f`'s recipe in run `name`, with the variables
/// torchrun sets (`MASTER_PORT` `port`, run id `id`, or `id#n` for its `n`th restart);
/// `args[r]` are rank `r`'s own arguments.
fn launch(f: &Fixture, name: &str, world: usize, port: u16, id: &str, args: &[&[&str]]) -> Vec<Rank> {
    (0..world)
        .map(|r| {
            let mut cmd: Command = f.cmd(name, args.get(r).copied().unwrap_or(&[]));
            cmd.env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("TORCHELASTIC_RUN_ID", id.split('#').next().unwrap())
                .env("TORCHELASTIC_RESTART_COUNT", id.split('#').nth(1).unwrap_or("0"))
                .env_remove("OOMPH_LAUNCHER");
            let log = f.run(name).with_extension(format!("rank{r}.log"));
            let out = File::create(&log).unwrap();
            cmd.stdout(Stdio::from(out.try_clone().unwrap())).stderr(Stdio::from(out));
            Rank { child: cmd.spawn().expect("start a rank"), log }
        })
        .collect()
}

/// Waits for every rank to end (a bounded number of polls: a rank that waits forever fails
/// the test long before any collective deadline); returns each one's status and output.
fn wait_all(ranks: Vec<Rank>) -> Vec<(ExitStatus, String)> {
    ranks
        .into_iter()
        .map(|mut r| {
            let mut status = None;
            wait_for("a rank ended", 24_000, Duration::from_millis(5), || {
                status = r.child.try_wait().unwrap();
                status.is_some()
            });
            (status.unwrap(), std::fs::read_to_string(&r.log).unwrap_or_default())
        })
        .collect()
}

fn all_ok(results: &[(ExitStatus, String)]) {
    for (r, (status, out)) in results.iter().enumerate() {
        assert!(status.success(), "rank {r}: {status}\n{out}");
    }
}

/// Steps recorded in `run`'s metrics so far (0 before the file exists).
fn steps_done(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"kind\":\"step\"")).count())
        .unwrap_or(0)
}

#[test]
fn two_processes_train_the_parameters_of_one() {
    let f = Fixture::new(&TestRecipe::ranked());
    let one = f.reference("one", &[]);
    let results = wait_all(launch(&f, "two", 2, free_port(), "a", &[]));
    all_ok(&results);
    let run = f.run("two");
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "1 process vs 2: max |diff| {d:e}");
    let (a, b) = (summary(&one), summary(&run));
    assert_eq!(a.samples_seen, b.samples_seen, "the effective batch is global");
    assert_eq!(b.ranks, Some(2));
    // Rank 0 alone writes the run directory, and alone prints the run's summary.
    assert_eq!(step_lines(&run), step_lines(&one));
    assert!(results[0].1.contains("valid loss") && !results[1].1.contains("valid loss"), "{results:?}");
}

#[test]
fn a_killed_rank_stops_the_other_at_once_and_the_gang_resumes_from_rank_0s_checkpoint() {
    // 300 steps (about a millisecond each here), so that the kill lands in the middle; no
    // deadline to wait for.
    let f = Fixture::new(&TestRecipe::ranked().set("training.steps", 300).set("distributed.timeout_s", 3600.0));
    let one = f.reference("one", &[]);
    let run = f.run("killed");
    let mut ranks = launch(&f, "killed", 2, free_port(), "a", &[]);
    wait_while_running(&mut ranks[0].child, "rank 0 checkpointed step 8", || steps_done(&run) >= 9);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(ranks[1].child.id() as i32, libc::SIGKILL) };
    let results = wait_all(ranks);
    let (status, out) = &results[0];
    assert_eq!(status.code(), Some(6), "rank 0 stops as a gang failure (exit 6): {out}");
    assert!(out.contains("rank 1 is gone"), "rank 0 names the rank that died: {out}");
    assert!(!out.contains("distributed.timeout_s"), "rank 0 did not wait for the deadline: {out}");
    // The launcher's restart: every rank again, a new attempt, from rank 0's newest checkpoint.
    let results = wait_all(launch(&f, "killed", 2, free_port(), "b", &[]));
    all_ok(&results);
    assert_eq!(summary(&run).resumes, 1, "{results:?}");
    assert_eq!(summary(&run).samples_seen, summary(&one).samples_seen);
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "killed and resumed vs 1 process: max |diff| {d:e}");
}

#[test]
fn a_rank_that_fails_tells_the_other_processes_why() {
    let f = Fixture::new(&TestRecipe::ranked().set("distributed.ranks", 2).set("distributed.timeout_s", 3600.0));
    let panic = ["--set", "faults.panic_at=[{step=4, phase=\"backward\", rank=1}]"];
    let results = wait_all(launch(&f, "panic", 2, free_port(), "a", &[&panic, &panic]));
    assert_eq!(results[1].0.code(), Some(1), "{}", results[1].1);
    let (status, out) = &results[0];
    assert_eq!(status.code(), Some(6), "{out}");
    assert!(out.contains("rank 1") && out.contains("simulated model bug"), "rank 1's own message: {out}");
    assert!(!out.contains("distributed.timeout_s"), "{out}");
}

#[test]
fn a_launch_that_does_not_fit_the_recipe_is_refused_before_training() {
    let f = Fixture::new(&TestRecipe::ranked().set("distributed.ranks", 3));
    let results = wait_all(launch(&f, "three", 2, free_port(), "a", &[]));
    for (status, out) in &results {
        assert_eq!(status.code(), Some(2), "{out}");
        assert!(out.contains("torchrun started 2 processes") && out.contains("Fix:"), "{out}");
    }
    // Ranks of different recipes never train together, whatever key differs (regression: keys
    // that a resume may change, such as training.eval_every, were not compared, and the ranks
    // fell out of step at the first evaluation): the rank that differs is named.
    let f = Fixture::new(&TestRecipe::ranked());
    let eval = ["--set", "training.eval_every=7"];
    let results = wait_all(launch(&f, "mixed", 2, free_port(), "a", &[&[], &eval]));
    let (status, out) = &results[0];
    assert_eq!(status.code(), Some(6), "{out}");
    assert!(out.contains("rank 1") && out.contains("runs another recipe"), "{out}");
    assert!(!results[1].0.success(), "{}", results[1].1);
    assert!(!f.run("mixed").join("metrics.jsonl").exists() || steps_done(&f.run("mixed")) == 0);
}

/// Every process loads its own data (perhaps on another machine): a rank whose data differs
/// from rank 0's stops the launch before its first step, named (regression: a rank with
/// another text file of the same recipe trained on it silently; the recipe's fingerprint
/// leaves `data.path` out, so that a run can move).
#[test]
fn a_rank_with_other_data_is_refused_before_its_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    let text = "to be or not to be, that is the question. ".repeat(40);
    std::fs::write(&a, &text).unwrap();
    // The same length and characters, another order.
    std::fs::write(&b, text.chars().rev().collect::<String>()).unwrap();
    let f = Fixture::new(&TestRecipe::gpt(&a).set("distributed.timeout_s", 3600.0));
    let other = format!("data.path={:?}", b.display().to_string());
    let results = wait_all(launch(&f, "data", 2, free_port(), "a", &[&[], &["--set", &other]]));
    for (r, (status, out)) in results.iter().enumerate() {
        assert_eq!(status.code(), Some(2), "rank {r}: {out}");
        assert!(out.contains("rank(s) [1] loaded other data than rank 0") && out.contains("Fix:"), "rank {r}: {out}");
    }
    assert_eq!(steps_done(&f.run("data")), 0);
}

/// A rank that fails before the gang forms (here: rank 1's data cannot be read; or rank 0
/// refuses to start over a run) stops every rank at once with its message, long before the
/// deadline (regression: the others waited `distributed.timeout_s` and then blamed rank 0's
/// address).
#[test]
fn a_rank_that_fails_before_the_gang_forms_stops_every_rank_at_once() {
    let f = Fixture::new(&TestRecipe::ranked().set("distributed.timeout_s", 3600.0));
    // Rank 1's data is not there (`data.path` may differ between machines).
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("a.txt");
    std::fs::write(&text, "to be or not to be, that is the question. ".repeat(40)).unwrap();
    let g = Fixture::new(&TestRecipe::gpt(&text).set("distributed.timeout_s", 3600.0));
    let gone = format!("data.path={:?}", dir.path().join("gone.txt").display().to_string());
    let results = wait_all(launch(&g, "nodata", 2, free_port(), "a", &[&[], &["--set", &gone]]));
    assert_eq!(results[1].0.code(), Some(2), "{}", results[1].1);
    let (status, out) = &results[0];
    assert_eq!(status.code(), Some(6), "{out}");
    assert!(out.contains("rank 1 failed") && out.contains("gone.txt"), "rank 1's own message: {out}");
    // Rank 0 refuses to start over a run that exists: rank 1 learns why at once.
    all_ok(&wait_all(launch(&f, "twice", 2, free_port(), "a", &[])));
    let never = ["--resume", "never"];
    let results = wait_all(launch(&f, "twice", 2, free_port(), "b", &[&never, &never]));
    assert_eq!(results[0].0.code(), Some(2), "{}", results[0].1);
    let (status, out) = &results[1];
    assert_eq!(status.code(), Some(6), "{out}");
    assert!(out.contains("rank 0 failed") && out.contains("already holds a run"), "rank 0's own message: {out}");
}

/// A rank that stops answering (here: stopped) is named by rank 0 at the deadline, and rank 0
/// tells the others (regression: every rank said only that some rank was stuck or gone).
#[test]
fn a_stuck_rank_is_named_at_the_deadline() {
    let f = Fixture::new(&TestRecipe::ranked().set("training.steps", 100_000).set("distributed.timeout_s", 2.0));
    let run = f.run("stuck");
    let mut ranks = launch(&f, "stuck", 3, free_port(), "a", &[]);
    wait_while_running(&mut ranks[0].child, "the gang trains", || steps_done(&run) >= 3);
    let stuck = ranks.pop().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(stuck.child.id() as i32, libc::SIGSTOP) };
    let results = wait_all(ranks);
    // SAFETY: as above.
    unsafe { libc::kill(stuck.child.id() as i32, libc::SIGKILL) };
    let _ = wait_all(vec![stuck]);
    for (r, (status, out)) in results.iter().enumerate() {
        assert_eq!(status.code(), Some(6), "rank {r}: {out}");
        assert!(out.contains("rank 2 did not answer within distributed.timeout_s"), "rank {r}: {out}");
    }
}

/// A launcher's restart resumes the run from its newest checkpoint, whatever `--resume` and
/// `--overwrite` asked of the first attempt (regression: torchrun's restart of a `--resume never
/// --overwrite` launch removed the run again and started over, so the death came again).
#[test]
fn a_launchers_restart_resumes_whatever_the_first_attempt_asked() {
    let f = Fixture::new(&TestRecipe::ranked().set("distributed.ranks", 2));
    let one = f.reference("one", &["--set", "distributed.ranks=1"]);
    all_ok(&wait_all(launch(&f, "r", 2, free_port(), "old", &[])));
    let args = ["--resume", "never", "--overwrite", "--set", "faults.die_at=[{step=12, phase=\"backward\", rank=1}]"];
    let results = wait_all(launch(&f, "r", 2, free_port(), "new", &[&args, &args]));
    assert_eq!(results[0].0.code(), Some(6), "{}", results[0].1);
    assert!(results[0].1.contains("--overwrite removed the old run"), "{}", results[0].1);
    // torchrun's first restart, with the same command line.
    let results = wait_all(launch(&f, "r", 2, free_port(), "new#1", &[&args, &args]));
    all_ok(&results);
    assert!(!results[0].1.contains("--overwrite removed"), "{}", results[0].1);
    let run = f.run("r");
    assert_eq!((summary(&run).resumes, summary(&run).restarts), (1, 1), "{}", results[0].1);
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "restarted launch vs 1 process: max |diff| {d:e}");
}

/// A launcher's restart after a rank's memory death (a failed host allocation in its backward
/// pass) shrinks the micro-batch below the size that died, as the supervisor does for a single
/// process: rank 0 of the restart reads the dead rank's note and tells the others.
#[test]
fn a_launchers_restart_after_a_memory_death_shrinks_the_micro_batch() {
    let f = Fixture::new(&TestRecipe::ranked().set("distributed.ranks", 2));
    let one = f.reference("one", &["--set", "distributed.ranks=1"]);
    let die = ["--set", "faults.die_at=[{step=5, phase=\"backward\", rank=1}]"];
    let first = wait_all(launch(&f, "died", 2, free_port(), "a", &[&die, &die]));
    assert_eq!(first[0].0.code(), Some(6), "{}", first[0].1);
    assert!(first[1].1.contains("memory allocation of"), "{}", first[1].1);
    let again = wait_all(launch(&f, "died", 2, free_port(), "a#1", &[&die, &die]));
    all_ok(&again);
    assert!(again[0].1.contains("with the micro-batch below 32"), "{}", again[0].1);
    let run = f.run("died");
    let restarts = events(&run, "restart");
    let seen: Vec<_> =
        restarts.iter().map(|e| (e["step"].clone(), e["phase"].clone(), e["micro_batch"].clone())).collect();
    assert_eq!(seen, [(5.into(), "train".into(), 32.into())], "{restarts:?}");
    let last = step_records(&run).last().cloned().unwrap();
    assert_eq!(last["micro_batch"].as_u64(), Some(16), "every rank shrank to the same size");
    let d = max_param_diff(&one, &run);
    assert!(d < TOL, "restarted launch vs 1 process: max |diff| {d:e}");
}
