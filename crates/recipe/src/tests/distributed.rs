//! `[distributed]` and per-rank faults: defaults, rules, one rank's view of the faults, the
//! resolved form and `--set`.

use super::*;

/// A recipe with `ranks` ranks followed by `rest` (more sections).
fn with_ranks(ranks: usize, rest: &str) -> String {
    format!("[distributed]\nranks = {ranks}\n{rest}")
}

#[test]
fn distributed_defaults() {
    let r = ok("");
    assert_eq!(r.distributed, DistributedSection { ranks: 1, devices: vec![], timeout_s: 300.0, check_every: 50 });
    assert_eq!(r.rank_devices(), [0]);
    // Without devices, ranks count up from run.device (one rank keeps run.device).
    assert_eq!(ok("[run]\ndevice = 2\n").rank_devices(), [2]);
    assert_eq!(ok(&format!("[run]\ndevice = 2\n{}", with_ranks(3, ""))).rank_devices(), [2, 3, 4]);
    assert_eq!(ok(&with_ranks(2, "devices = [3, 1]\n")).rank_devices(), [3, 1]);
}

/// Rank 0 computes on the first device listed, not on `run.device` (regression: the process
/// dispatched on `run.device`, so `devices = [3, 1]` trained rank 0 on device 0).
#[test]
fn the_process_device_is_rank_0s() {
    assert_eq!(ok("[run]\ndevice = 2\n").device(), 2);
    assert_eq!(ok(&format!("[run]\ndevice = 2\n{}", with_ranks(3, ""))).device(), 2);
    assert_eq!(ok(&with_ranks(2, "devices = [3, 1]\n")).device(), 3);
}

#[test]
fn valid_distributed_settings() {
    let r = ok(&with_ranks(4, "devices = [3, 0, 1, 2]\ntimeout_s = 0.5\ncheck_every = 0\n"));
    assert_eq!(
        r.distributed,
        DistributedSection { ranks: 4, devices: vec![3, 0, 1, 2], timeout_s: 0.5, check_every: 0 }
    );
    // As many ranks as samples in a step: one each.
    let r = ok(&format!("[training]\neffective_batch = 3\n{}", with_ranks(3, "")));
    assert_eq!(r.distributed.ranks, 3);
    // Faults of the last rank, and one capacity per rank.
    let r = ok(&with_ranks(
        2,
        "[faults]\nsimulate_memory_samples = [64, 12]\noom_at = [{ step = 3, phase = \"forward\", rank = 1 }]\n\
         simulate_memory_changes = [{ step = 5, samples = 8, rank = 1 }]\n",
    ));
    assert_eq!(r.faults.simulate_memory_samples, Some(PerRank::Each(vec![64, 12])));
    assert_eq!(r.faults.oom_at, [FaultAt { step: 3, phase: Phase::Forward, rank: Some(1) }]);
    assert_eq!(r.faults.simulate_memory_changes, [CapacityChange { step: 5, samples: 8, rank: Some(1) }]);
    // One integer is every rank's capacity, whatever the number of ranks.
    let r = ok(&with_ranks(3, "[faults]\nsimulate_memory_samples = 12\n"));
    assert_eq!(r.faults.simulate_memory_samples, Some(PerRank::All(12)));
}

/// Every rule of `[distributed]` and of the faults' ranks, with the key it blames.
#[test]
fn distributed_rules() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("[distributed]\nranks = 0", "distributed.ranks", &["`distributed.ranks` = 0 is invalid", "positive integer"]),
        (
            "[distributed]\nranks = 33",
            "distributed.ranks",
            &["= 33", "at least one sample", "training.effective_batch = 32", "at most 32"],
        ),
        ("[training]\neffective_batch = 2\n[distributed]\nranks = 3", "distributed.ranks", &["at most 2"]),
        (
            "[distributed]\nranks = 2\ndevices = [0]",
            "distributed.devices",
            &["= [0]", "lists 1 device,", "distributed.ranks = 2", "list 2 distinct", "devices [0, 1]"],
        ),
        (
            "[run]\ndevice = 3\n[distributed]\ndevices = [0, 1]",
            "distributed.devices",
            &["[0, 1]", "2 devices", "distributed.ranks = 1", "devices [3]"],
        ),
        (
            "[distributed]\nranks = 3\ndevices = [2, 1, 2]",
            "distributed.devices",
            &["[2, 1, 2]", "device 2 is listed twice", "distinct"],
        ),
        ("[distributed]\ntimeout_s = 0", "distributed.timeout_s", &["= 0.0", "finite number > 0"]),
        ("[distributed]\ntimeout_s = -1.5", "distributed.timeout_s", &["-1.5"]),
        ("[distributed]\ntimeout_s = nan", "distributed.timeout_s", &["NaN"]),
        ("[distributed]\ntimeout_s = inf", "distributed.timeout_s", &["inf"]),
        (
            "[distributed]\nranks = 2\n[faults]\noom_at = [{ step = 1, phase = \"forward\", rank = 2 }]",
            "faults.oom_at[0].rank",
            &["= 2", "distributed.ranks = 2", "below 2", "every rank"],
        ),
        (
            "[faults]\ndie_at = [{ step = 1, phase = \"forward\" }, { step = 2, phase = \"checkpoint\", rank = 1 }]",
            "faults.die_at[1].rank",
            &["= 1", "distributed.ranks = 1"],
        ),
        ("[faults]\npanic_at = [{ step = 1, phase = \"eval\", rank = 5 }]", "faults.panic_at[0].rank", &[]),
        ("[faults]\nabort_at = [{ step = 1, phase = \"eval\", rank = 1 }]", "faults.abort_at[0].rank", &[]),
        (
            "[faults]\nsimulate_memory_changes = [{ step = 1, samples = 4, rank = 1 }]",
            "faults.simulate_memory_changes[0].rank",
            &["= 1"],
        ),
        (
            "[distributed]\nranks = 3\n[faults]\nsimulate_memory_samples = [64, 12]",
            "faults.simulate_memory_samples",
            &["[64, 12]", "it has 2", "distributed.ranks = 3", "give 3 capacities"],
        ),
        ("[faults]\nsimulate_memory_samples = []", "faults.simulate_memory_samples", &["[]", "distributed.ranks = 1"]),
        (
            "[distributed]\nranks = 2\n[faults]\nsimulate_memory_samples = [64, 0]",
            "faults.simulate_memory_samples[1]",
            &["= 0", "zero samples"],
        ),
    ];
    for (text, key, words) in cases {
        let e = err(text);
        blames(&e, "r.toml", key, words);
    }
}

#[test]
fn wrong_types_in_distributed_keys() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("[distributed]\nranks = \"two\"", "distributed.ranks", &["\"two\"", "non-negative integer", "such as 1"]),
        ("[distributed]\ndevices = 1", "distributed.devices", &["= 1", "device indices", "[0, 1]"]),
        ("[distributed]\ndevices = [-1]", "distributed.devices[0]", &["-1"]),
        ("[distributed]\ntimeout_s = \"5m\"", "distributed.timeout_s", &["\"5m\"", "a number", "300.0"]),
        ("[faults]\nsimulate_memory_samples = \"x\"", "faults.simulate_memory_samples", &["\"x\"", "one per rank"]),
        ("[faults]\nsimulate_memory_samples = -3", "faults.simulate_memory_samples", &["-3", "one per rank"]),
        ("[faults]\nsimulate_memory_samples = [1, \"x\"]", "faults.simulate_memory_samples[1]", &["\"x\""]),
        ("[faults]\noom_at = [{ step = 1, phase = \"eval\", rank = -1 }]", "faults.oom_at[0].rank", &["-1"]),
    ];
    for (text, key, words) in cases {
        let e = err(text);
        blames(&e, "r.toml", key, words);
    }
}

#[test]
fn per_rank_values() {
    assert_eq!(PerRank::All(3).get(7), Some(3));
    assert_eq!(PerRank::Each(vec![5, 6]).get(1), Some(6));
    assert_eq!(PerRank::Each(vec![5, 6]).get(2), None);
    assert_eq!(PerRank::All(3).uniform(), Some(3));
    assert_eq!(PerRank::Each(vec![4, 4]).uniform(), Some(4));
    assert_eq!(PerRank::Each(vec![4, 5]).uniform(), None);
    assert_eq!(PerRank::Each(vec![]).uniform(), None);
}

#[test]
fn for_rank_keeps_this_ranks_faults() {
    let at = |step, rank| FaultAt { step, phase: Phase::Forward, rank };
    let all = FaultsSection {
        simulate_memory_samples: Some(PerRank::Each(vec![64, 12])),
        simulate_memory_changes: vec![
            CapacityChange { step: 2, samples: 8, rank: Some(0) },
            CapacityChange { step: 3, samples: 4, rank: None },
        ],
        oom_at: vec![at(1, None), at(2, Some(1)), at(3, Some(0))],
        panic_at: vec![at(4, Some(1))],
        die_at: vec![at(5, Some(0))],
        abort_at: vec![at(6, None)],
        nan_at: vec![7],
        disk_full_at: vec![8],
        address_space_headroom: Some("1GiB".into()),
    };
    let zero = all.for_rank(0);
    assert_eq!(zero.simulate_memory_samples, Some(PerRank::All(64)));
    assert_eq!(zero.simulate_memory_changes, all.simulate_memory_changes);
    assert_eq!(zero.oom_at, [at(1, None), at(3, Some(0))]);
    assert_eq!(zero.panic_at, []);
    assert_eq!(zero.die_at, [at(5, Some(0))]);
    assert_eq!(zero.abort_at, [at(6, None)]);
    assert_eq!((zero.nan_at, zero.disk_full_at), (vec![7], vec![8]));
    assert_eq!(zero.address_space_headroom.as_deref(), Some("1GiB"));

    let one = all.for_rank(1);
    assert_eq!(one.simulate_memory_samples, Some(PerRank::All(12)));
    assert_eq!(one.simulate_memory_changes, [CapacityChange { step: 3, samples: 4, rank: None }]);
    assert_eq!(one.oom_at, [at(1, None), at(2, Some(1))]);
    assert_eq!(one.panic_at, [at(4, Some(1))]);
    assert_eq!(one.die_at, []);
    // A view is its own view.
    assert_eq!(one.for_rank(1), one);

    // One capacity for every rank stays one; none stays none; a one-rank recipe's faults are
    // their own view.
    let mut same = FaultsSection { simulate_memory_samples: Some(PerRank::All(9)), ..FaultsSection::default() };
    assert_eq!(same.for_rank(3).simulate_memory_samples, Some(PerRank::All(9)));
    same.simulate_memory_samples = None;
    assert_eq!(same.for_rank(0), same);
    let r = ok("[faults]\nsimulate_memory_samples = 12\noom_at = [{ step = 3, phase = \"forward\" }]\n");
    assert_eq!(r.faults.for_rank(0), r.faults);
}

#[test]
fn resolved_form_round_trips_and_keeps_one_rank_faults_as_written() {
    // A one-rank recipe's faults are written exactly as before ranks existed (an inline
    // table's keys sorted).
    let faults = "[faults]\n\
                  simulate_memory_samples = 12\n\
                  simulate_memory_changes = [{ samples = 16, step = 10 }]\n\
                  oom_at = [{ phase = \"forward\", step = 3 }]\n\
                  panic_at = []\n\
                  die_at = [{ phase = \"checkpoint\", step = 5 }]\n\
                  abort_at = []\n\
                  nan_at = []\n\
                  disk_full_at = []\n\
                  # address_space_headroom is unset: no limit\n";
    let text = to_toml_string(&ok(faults));
    assert!(text.ends_with(&format!("\n{faults}")), "{text}");
    assert!(
        text.contains(
            "\n[supervisor]\nenabled = true\nmax_restarts = 5\n\n[distributed]\nranks = 1\ndevices = []\n\
                       timeout_s = 300.0\ncheck_every = 50\n\n[faults]\n"
        ),
        "{text}"
    );

    let r = ok(&with_ranks(
        2,
        "devices = [1, 0]\ntimeout_s = 2.5\ncheck_every = 7\n[faults]\nsimulate_memory_samples = [64, 12]\n\
         simulate_memory_changes = [{ step = 4, samples = 2, rank = 0 }]\n\
         oom_at = [{ step = 3, phase = \"forward\", rank = 1 }, { step = 4, phase = \"eval\" }]\n",
    ));
    let text = to_toml_string(&r);
    assert!(
        text.contains("\n[distributed]\nranks = 2\ndevices = [1, 0]\ntimeout_s = 2.5\ncheck_every = 7\n"),
        "{text}"
    );
    assert!(text.contains("\nsimulate_memory_samples = [64, 12]\n"), "{text}");
    assert!(text.contains("[{ rank = 0, samples = 2, step = 4 }]"), "{text}");
    assert!(text.contains("[{ phase = \"forward\", rank = 1, step = 3 }, { phase = \"eval\", step = 4 }]"), "{text}");
    let back = parse(&text, "resolved.toml", Path::new("."), &[]).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, r, "{text}");
}

#[test]
fn set_distributed_and_per_rank_capacity() {
    let r = parse("", "r.toml", Path::new("."), &sets(&["distributed.ranks=3", "distributed.devices=[2,0,1]"]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.distributed.ranks, r.distributed.devices), (3, vec![2, 0, 1]));
    let r = parse("", "r.toml", Path::new("."), &sets(&["faults.simulate_memory_samples=12"])).unwrap();
    assert_eq!(r.faults.simulate_memory_samples, Some(PerRank::All(12)));
    let r = parse(
        &with_ranks(2, ""),
        "r.toml",
        Path::new("."),
        &sets(&["faults.simulate_memory_samples=[64,12]", "distributed.timeout_s=5"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.faults.simulate_memory_samples, Some(PerRank::Each(vec![64, 12])));
    assert_eq!(r.distributed.timeout_s, 5.0);

    let e = err_with("", &["distributed.ranks=0"]);
    blames(&e, "--set", "distributed.ranks", &["= 0"]);
    let e = err_with("", &["distributed.rank=2"]);
    blames(&e, "--set", "distributed.rank", &["ranks", "devices", "timeout_s", "check_every", "`distributed.ranks`"]);
    // The per-rank list is checked against the ranks the file gives.
    let e = err_with(&with_ranks(3, ""), &["faults.simulate_memory_samples=[64,12]"]);
    blames(&e, "--set", "faults.simulate_memory_samples", &["distributed.ranks = 3"]);
}

#[test]
fn the_number_of_ranks_may_change_on_resume() {
    let one = ok("");
    let two = ok(&with_ranks(2, "devices = [0, 1]\n"));
    assert_eq!(fingerprint(&one), fingerprint(&two));
    let changes = diff(&one, &two);
    let keys: Vec<(&str, bool)> = changes.iter().map(|c| (c.key.as_str(), c.resumable)).collect();
    assert_eq!(keys, [("distributed.ranks", true), ("distributed.devices", true)]);
}
