//! Several ranks (`[distributed]`, the `distributed` feature): what the agreement between
//! ranks costs.
//!
//! `cargo bench --features distributed --bench ranks` prints the markdown tables of
//! BENCHMARKS.md, section 10:
//! - the agreement rounds' share of a step: the time of one round (two ranks as threads,
//!   measured alone) against the median step of a 2-rank run, as the ratio of the step to the
//!   same step without its two rounds;
//! - the time from one rank's out-of-memory to every rank retrying: the run's `recovery_s`
//!   per OOM (the failed attempt, the agreement and the cleanup), with 2 ranks and with 1, in
//!   units of the median step.
//!
//! On the CPU every rank shares the same cores: these are costs, not speed-ups.
#![allow(missing_docs)]

mod common;

use common::*;
use oomph::train::gang::burn_collective::{abandon, BurnCollective};
use oomph::train::gang::{Board, Link};
use std::sync::Arc;
use std::time::{Duration, Instant};

type I = burn::backend::Flex;

fn main() {
    println!("backend flex (CPU), ranks as threads of this process\n");
    let round = round_time();
    println!("## Agreement rounds\n");
    println!("One round = every rank's row of 3 numbers through burn's collective (2 ranks), median of");
    println!("{ROUNDS} rounds in {BATCHES} batches: {:.1} us.", round * 1e6);
    let tcp = tcp_round_time();
    println!("The same over TCP on localhost (the transport of a launch's processes): {:.1} us.\n", tcp * 1e6);
    let mut rows = Vec::new();
    for (name, eff) in [("digits-mlp-debug.toml", 64usize), ("tiny-gpt-debug.toml", 32)] {
        let data = data_for(&shipped(name, &[]));
        let common = sets(&[
            "training.steps=200",
            "training.eval_every=0",
            "checkpoint.every=0",
            &format!("training.effective_batch={eff}"),
            &format!("micro_batch.initial={eff}"),
            "micro_batch.grow_after=1000000",
        ]);
        let mut one = Vec::new();
        let mut two = Vec::new();
        for rep in 0..3 {
            let r1 = shipped(name, &common);
            let r2 = shipped(name, &with(&common, &["distributed.ranks=2"]));
            let (a, b) = if rep % 2 == 0 {
                let a = train_builtin::<Fx>(r1, &data);
                (a, train_builtin::<Fx>(r2, &data))
            } else {
                let b = train_builtin::<Fx>(r2, &data);
                (train_builtin::<Fx>(r1, &data), b)
            };
            one.push(median(&a.step_times(10)));
            two.push(median(&b.step_times(10)));
        }
        let (s1, s2) = (median(&one), median(&two));
        rows.push(vec![
            name.trim_end_matches(".toml").into(),
            format!("{:.0}", s1 * 1e6),
            format!("{:.0}", s2 * 1e6),
            format!("{:.3}", s2 / (s2 - 2.0 * round)),
        ]);
    }
    table(&["model", "step, 1 rank (us)", "step, 2 ranks (us)", "2-rank step / the same without its 2 rounds"], &rows);

    println!("\n## From one rank's OOM to every rank retrying\n");
    println!("One simulated OOM in the forward pass of step 20 (on rank 1 of 2, or on the only rank):");
    println!("the run's `recovery_s` per OOM (the failed attempt, the agreement, the cleanup), in ms and in");
    println!("units of the run's median step. Median of 3.\n");
    let mut rows = Vec::new();
    for (name, eff) in [("digits-mlp-debug.toml", 64usize), ("tiny-gpt-debug.toml", 32)] {
        let data = data_for(&shipped(name, &[]));
        for (ranks, fault) in [
            (1, r#"faults.oom_at=[{step=20, phase="forward"}]"#),
            (2, r#"faults.oom_at=[{step=20, phase="forward", rank=1}]"#),
        ] {
            let r = shipped(
                name,
                &sets(&[
                    "training.steps=40",
                    "training.eval_every=0",
                    "checkpoint.every=0",
                    "checkpoint.on_oom=false",
                    &format!("training.effective_batch={eff}"),
                    &format!("micro_batch.initial={eff}"),
                    "micro_batch.grow_after=1000000",
                    &format!("distributed.ranks={ranks}"),
                    fault,
                ]),
            );
            let (mut ms, mut steps) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                let o = train_builtin::<Fx>(r.clone(), &data);
                assert_eq!(o.summary.oom_events, 1, "{name}, {ranks} ranks");
                let per = o.summary.recovery_s;
                ms.push(per * 1e3);
                steps.push(per / median(&o.step_times(2)));
            }
            rows.push(vec![
                name.trim_end_matches(".toml").into(),
                ranks.to_string(),
                format!("{:.2}", median(&ms)),
                format!("{:.2}", median(&steps)),
            ]);
        }
    }
    table(&["model", "ranks", "recovery_s per OOM (ms)", "in steps"], &rows);

    println!("\n## Several processes (a launch's, over TCP)\n");
    println!("The oomph binary as 1 process and as 2 processes started with torchrun's variables on");
    println!("localhost: the median step (200 steps), and `recovery_s` per OOM (one simulated OOM in the");
    println!("forward pass of step 20 on rank 1). Median of 3.\n");
    let mut rows = Vec::new();
    for (name, eff) in [("digits-mlp-debug.toml", 64usize), ("tiny-gpt-debug.toml", 32)] {
        let common = [
            "training.eval_every=0".to_string(),
            "checkpoint.every=0".into(),
            format!("training.effective_batch={eff}"),
            format!("micro_batch.initial={eff}"),
            "micro_batch.grow_after=1000000".into(),
            "distributed.ranks=2".into(),
        ];
        let (mut one, mut two, mut oom) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..3 {
            let steps = with(&common, &["training.steps=200"]);
            let mut order = [1, 2];
            if rep % 2 == 1 {
                order.reverse();
            }
            for world in order {
                let metrics = launch(name, world, &steps).0;
                let t = median(&step_times(&metrics, 10));
                if world == 1 { &mut one } else { &mut two }.push(t);
            }
            let fault = r#"faults.oom_at=[{step=20, phase="forward", rank=1}]"#;
            let (metrics, summary) = launch(name, 2, &with(&common, &["training.steps=40", fault]));
            assert_eq!(summary.oom_events, 1, "{name}");
            oom.push((summary.recovery_s * 1e3, summary.recovery_s / median(&step_times(&metrics, 2))));
        }
        let (s1, s2) = (median(&one), median(&two));
        rows.push(vec![
            name.trim_end_matches(".toml").into(),
            format!("{:.0}", s1 * 1e6),
            format!("{:.0}", s2 * 1e6),
            format!("{:.3}", s2 / s1),
            format!("{:.2}", median(&oom.iter().map(|o| o.0).collect::<Vec<_>>())),
            format!("{:.2}", median(&oom.iter().map(|o| o.1).collect::<Vec<_>>())),
        ]);
    }
    table(
        &["model", "step, 1 process (us)", "step, 2 processes (us)", "ratio", "recovery_s per OOM (ms)", "in steps"],
        &rows,
    );
}

/// Trains configs/`name` with `sets` as `world` processes of the oomph binary (torchrun's
/// variables, localhost); returns rank 0's metrics and summary.
fn launch(name: &str, world: usize, sets: &[String]) -> (Vec<oomph::train::StepRecord>, oomph::train::Summary) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let run = dir.path().join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..world)
        .map(|r| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oomph"));
            cmd.arg("train").arg(root().join("configs").join(name)).arg("--run-dir").arg(&run).arg("--no-supervise");
            for s in sets {
                cmd.arg("--set").arg(s);
            }
            if world > 1 {
                cmd.env("RANK", r.to_string()).env("WORLD_SIZE", world.to_string()).env("LOCAL_RANK", r.to_string());
                cmd.env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string());
            } else {
                cmd.arg("--set").arg("distributed.ranks=1");
            }
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            cmd.spawn().expect("start oomph")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "{name} with {world} processes failed");
    }
    let metrics = oomph::train::metrics::read_metrics(&run.join("metrics.jsonl")).expect("metrics").expect("metrics");
    let summary: oomph::train::Summary =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).expect("summary")).expect("summary");
    (metrics.steps, summary)
}

const ROUNDS: usize = 2000;
const BATCHES: usize = 10;

/// Seconds per agreement round of two ranks (threads), measured alone.
fn round_time() -> f64 {
    let board = Arc::new(Board::default());
    let link = |r: usize| {
        let c = BurnCollective::<I>::new(r, 2, Default::default());
        Link::new(r, 2, Default::default(), Box::new(c), board.clone(), Duration::from_secs(60), abandon::<I>)
    };
    let t = time_rounds(link(0), link(1));
    // The runs that follow register again.
    std::thread::sleep(Duration::from_millis(50));
    abandon::<I>();
    t
}

/// One round between two ranks joined over TCP on localhost (`gang/tcp.rs`, the transport of
/// the processes of a launch; here as two threads of this process).
fn tcp_round_time() -> f64 {
    use oomph::train::gang::tcp::{Listening, Star, TcpCollective};
    let listening = Listening::bind("127.0.0.1:0").expect("listen");
    let addr = format!("127.0.0.1:{}", listening.port());
    let long = Duration::from_secs(60);
    let peer = std::thread::spawn(move || Star::join(&addr, 1, 2, 7, long).expect("join"));
    let root = listening.accept(2, 7, long).expect("accept");
    let peer = peer.join().unwrap();
    let link = |r: usize, star: Star| {
        let c = TcpCollective::<I>::new(star, Default::default());
        Link::new(r, 2, Default::default(), Box::new(c), Arc::new(Board::default()), long, || {})
    };
    time_rounds(link(0, root), link(1, peer))
}

/// The median time of one agreement round of rank `a` with rank `b` (on a thread of its own).
fn time_rounds(mut a: Link<I>, mut b: Link<I>) -> f64 {
    let other = std::thread::spawn(move || {
        for _ in 0..ROUNDS + 10 {
            b.agree(&[1.0, 2.0, 3.0]).expect("rank 1");
        }
    });
    for _ in 0..10 {
        a.agree(&[0.0, 0.0, 0.0]).expect("rank 0");
    }
    let mut per = Vec::new();
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..ROUNDS / BATCHES {
            a.agree(&[0.0, 0.0, 0.0]).expect("rank 0");
        }
        per.push(t.elapsed().as_secs_f64() / (ROUNDS / BATCHES) as f64);
    }
    other.join().unwrap();
    drop(a);
    median(&per)
}

fn with(v: &[String], more: &[&str]) -> Vec<String> {
    let mut v = v.to_vec();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}
