//! The launcher that started this process as one rank of several, read from the environment
//! it sets: torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, its run
//! id and restart count) or Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
//! the step's node list, the job and step ids). oomph's own ranks meet over TCP at rank 0's
//! address ([`Launch::master`]).
//!
//! torchrun's variables win over Slurm's (torchrun started by `srun` sees both);
//! `OOMPH_LAUNCHER=none` ignores both. A world of one is no launch: that process trains alone.

/// Set to `none` to train alone whatever launcher variables are set.
pub const LAUNCHER: &str = "OOMPH_LAUNCHER";

/// The port rank 0 listens on under Slurm when `MASTER_PORT` is not set: this plus the job
/// id and the step id modulo [`SLURM_PORTS`] (two jobs, or two steps of one job, that share a
/// node rarely collide, and the port stays below Linux's ephemeral range).
pub const SLURM_BASE_PORT: u16 = 29500;
/// See [`SLURM_BASE_PORT`].
pub const SLURM_PORTS: u64 = 2000;

/// Which launcher started the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun` (or any launcher that sets `RANK` and `WORLD_SIZE`).
    Torchrun,
    /// Slurm's `srun`.
    Slurm,
}

impl Launcher {
    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "srun",
        }
    }
}

/// This process's place in a launch of several processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The launcher.
    pub launcher: Launcher,
    /// This process's rank, below `world`.
    pub rank: usize,
    /// The number of processes.
    pub world: usize,
    /// This process's rank on its machine: which of the machine's devices it takes.
    pub local_rank: usize,
    /// Rank 0's host.
    pub master_addr: String,
    /// The port rank 0 listens on for oomph's ranks.
    pub port: u16,
    /// What tells this launch from another one of the same recipe (a restart of the same job,
    /// another job): the launcher's run id and restart count. Ranks of different launches
    /// never join one gang.
    pub attempt: String,
    /// Restarts of the gang so far, as the launcher counts them.
    pub restarts: usize,
}

impl Launch {
    /// The launch this process's environment describes: `Ok(None)` when no launcher (or a
    /// world of one) started it; an error that names the variable and the fix when the
    /// variables contradict each other.
    pub fn from_env() -> Result<Option<Launch>, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The same, with the variables read through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, String> {
        let get = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if get(LAUNCHER).is_some_and(|v| v.eq_ignore_ascii_case("none")) {
            return Ok(None);
        }
        let number = |name: &str| -> Result<Option<usize>, String> {
            get(name)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| {
                        format!(
                            "the launcher's variable {name}={v:?} is not a whole number. Fix: start oomph through \
                             torchrun or srun unchanged, or set {LAUNCHER}=none to train without a launcher."
                        )
                    })
                })
                .transpose()
        };
        let (launcher, rank, world, local_rank) = if get("RANK").is_some() && get("WORLD_SIZE").is_some() {
            let rank = number("RANK")?.unwrap_or(0);
            let world = number("WORLD_SIZE")?.unwrap_or(1);
            (Launcher::Torchrun, rank, world, number("LOCAL_RANK")?.unwrap_or(0))
        } else if get("SLURM_STEP_ID").or_else(|| get("SLURM_STEPID")).is_some() && get("SLURM_PROCID").is_some() {
            let rank = number("SLURM_PROCID")?.unwrap_or(0);
            let world = number("SLURM_NTASKS")?.or(number("SLURM_NPROCS")?).unwrap_or(1);
            (Launcher::Slurm, rank, world, number("SLURM_LOCALID")?.unwrap_or(0))
        } else {
            return Ok(None);
        };
        let (rank_var, world_var) = match launcher {
            Launcher::Torchrun => ("RANK", "WORLD_SIZE"),
            Launcher::Slurm => ("SLURM_PROCID", "SLURM_NTASKS"),
        };
        if rank >= world.max(1) || world == 0 {
            return Err(format!(
                "the launcher says this process is rank {rank} ({rank_var}) of {world} ({world_var}), and the ranks \
                 of {world} are 0 to {}. Fix: start oomph through {} unchanged, or set {LAUNCHER}=none to train \
                 without a launcher.",
                world.saturating_sub(1),
                launcher.name()
            ));
        }
        if world == 1 {
            return Ok(None);
        }
        let master_addr = match (get("MASTER_ADDR"), launcher) {
            (Some(a), _) => a,
            (None, Launcher::Slurm) => {
                let list = get("SLURM_STEP_NODELIST").or_else(|| get("SLURM_JOB_NODELIST")).unwrap_or_default();
                first_host(&list).ok_or_else(|| {
                    format!(
                        "srun started {world} ranks but oomph cannot tell rank 0's host: MASTER_ADDR is not set and \
                         the node list {list:?} (SLURM_STEP_NODELIST) names no host. Fix: export \
                         MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) before srun."
                    )
                })?
            }
            (None, Launcher::Torchrun) => {
                return Err(format!(
                    "the launcher set RANK and WORLD_SIZE ({world} ranks) but not MASTER_ADDR, rank 0's host. Fix: \
                     start oomph through torchrun (which sets it), or export MASTER_ADDR and MASTER_PORT, or set \
                     {LAUNCHER}=none to train without a launcher."
                ))
            }
        };
        let master_port = match get("MASTER_PORT") {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("MASTER_PORT={p:?} is not a port (1 to 65535). Fix: export a free port, such as 29500.")
            })?),
            None => None,
        };
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let port =
            match (launcher, master_port) {
                // torchrun's agent keeps its own store on MASTER_PORT: oomph's rank 0 takes the next.
                (Launcher::Torchrun, Some(p)) if agent_store => p.checked_add(1).ok_or_else(|| {
                    "MASTER_PORT is 65535 and torchrun's store holds it, so oomph has no port left for its ranks. Fix: \
                 start torchrun with --master-port 29500 (or any port below 65535)."
                        .to_string()
                })?,
                (_, Some(p)) => p,
                (Launcher::Torchrun, None) => return Err(
                    "the launcher set RANK, WORLD_SIZE and MASTER_ADDR but not MASTER_PORT. Fix: start oomph through \
                     torchrun (which sets it), or export MASTER_PORT=29500."
                        .into(),
                ),
                (Launcher::Slurm, None) => {
                    let job = number("SLURM_JOB_ID")?.unwrap_or(0) as u64;
                    let step = number("SLURM_STEP_ID")?.or(number("SLURM_STEPID")?).unwrap_or(0) as u64;
                    SLURM_BASE_PORT + (job.wrapping_add(step) % SLURM_PORTS) as u16
                }
            };
        let (attempt, restarts) = match launcher {
            Launcher::Torchrun => {
                let restarts = number("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0);
                (format!("torchrun {} {restarts}", get("TORCHELASTIC_RUN_ID").unwrap_or_default()), restarts)
            }
            Launcher::Slurm => {
                let restarts = number("SLURM_RESTART_COUNT")?.unwrap_or(0);
                let step = get("SLURM_STEP_ID").or_else(|| get("SLURM_STEPID")).unwrap_or_default();
                (format!("slurm {} {step} {restarts}", get("SLURM_JOB_ID").unwrap_or_default()), restarts)
            }
        };
        Ok(Some(Launch { launcher, rank, world, local_rank, master_addr, port, attempt, restarts }))
    }

    /// Rank 0's address for the other ranks, `host:port` (an IPv6 address in brackets).
    pub fn master(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.port)
        } else {
            format!("{}:{}", self.master_addr, self.port)
        }
    }
}

/// The first host of a Slurm node list (`node[01-04,07],gpu3` gives `node01`), as
/// `scontrol show hostnames` would list it first.
pub fn first_host(list: &str) -> Option<String> {
    // The first entry: up to a comma outside brackets.
    let mut depth = 0usize;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = list[..end].trim();
    let mut host = String::new();
    let mut rest = entry;
    // Each bracketed range contributes its first value, as written (zero padding kept).
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..].find(']')? + open;
        let first = rest[open + 1..close].split([',', '-']).next()?.trim();
        if first.is_empty() {
            return None;
        }
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    host.push_str(rest);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(|name| map.get(name).cloned())
    }

    const TORCHRUN: &[(&str, &str)] = &[
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_RUN_ID", "abc"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ];

    #[test]
    fn torchrun_variables_give_the_rank_the_world_and_rank_0s_address() {
        let l = launch(TORCHRUN).unwrap().unwrap();
        assert_eq!((l.launcher, l.rank, l.world, l.local_rank, l.restarts), (Launcher::Torchrun, 3, 4, 1, 2));
        assert_eq!(l.master(), "10.0.0.7:29500");
        assert_eq!(l.attempt, "torchrun abc 2");
        // torchrun's agent holds MASTER_PORT for its own store: oomph takes the next port.
        let with_store = [TORCHRUN, &[("TORCHELASTIC_USE_AGENT_STORE", "True")]].concat();
        assert_eq!(launch(&with_store).unwrap().unwrap().port, 29501);
        // Another restart is another attempt: its ranks never join the old ones.
        let again = [TORCHRUN, &[("TORCHELASTIC_RESTART_COUNT", "3")]].concat();
        assert_ne!(launch(&again).unwrap().unwrap().attempt, l.attempt);
    }

    #[test]
    fn srun_variables_give_the_rank_and_the_first_host_of_the_step() {
        let vars = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_STEP_NODELIST", "gpu[07-08],cpu1"),
        ];
        let l = launch(&vars).unwrap().unwrap();
        assert_eq!((l.launcher, l.rank, l.world, l.local_rank), (Launcher::Slurm, 5, 8, 1));
        assert_eq!(l.master(), format!("gpu07:{}", 29500 + 123456 % 2000));
        // Another step of the job (two sruns side by side) takes another port.
        let step1 = [&vars[..], &[("SLURM_STEP_ID", "1")]].concat();
        assert_eq!(u32::from(launch(&step1).unwrap().unwrap().port), 29500 + 123457 % 2000);
        // MASTER_ADDR and MASTER_PORT, when exported, win.
        let set = [&vars[..], &[("MASTER_ADDR", "head"), ("MASTER_PORT", "40000")]].concat();
        assert_eq!(launch(&set).unwrap().unwrap().master(), "head:40000");
        // torchrun under srun: torchrun's variables win.
        let both = [&vars[..], TORCHRUN].concat();
        assert_eq!(launch(&both).unwrap().unwrap().launcher, Launcher::Torchrun);
    }

    #[test]
    fn no_launcher_a_world_of_one_or_opting_out_is_training_alone() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        assert_eq!(launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_STEP_ID", "0")]).unwrap(), None);
        // An sbatch script's own shell (no srun step) is not a rank.
        assert_eq!(launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "9")]).unwrap(), None);
        let opted_out = [TORCHRUN, &[(LAUNCHER, "none")]].concat();
        assert_eq!(launch(&opted_out).unwrap(), None);
    }

    #[test]
    fn contradicting_launcher_variables_are_named_with_the_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "4"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")], "rank 4 (RANK) of 4"),
            (&[("RANK", "x"), ("WORLD_SIZE", "4")], "RANK=\"x\" is not a whole number"),
            // A world of one has rank 0 only; none is no world.
            (&[("RANK", "1"), ("WORLD_SIZE", "1")], "rank 1 (RANK) of 1"),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")], "rank 0 (RANK) of 0"),
            (&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "not MASTER_ADDR"),
            (&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")], "not MASTER_PORT"),
            (&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")], "not a port"),
            (&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_STEP_ID", "0")], "scontrol show hostnames"),
        ];
        for (vars, expected) in cases {
            let e = launch(vars).unwrap_err();
            assert!(e.contains(expected) && e.contains("Fix:"), "{vars:?}: {e}");
        }
    }

    #[test]
    fn the_first_host_of_a_node_list_is_the_first_scontrol_lists() {
        for (list, first) in [
            ("node1", Some("node1")),
            ("a,b", Some("a")),
            ("node[01-04,07],gpu3", Some("node01")),
            ("rack[2-3]-n[5,9]", Some("rack2-n5")),
            ("n[3,5]x", Some("n3x")),
            ("", None),
            ("n[", None),
        ] {
            assert_eq!(first_host(list).as_deref(), first, "{list}");
        }
        assert_eq!(Launch { master_addr: "::1".into(), ..launch(TORCHRUN).unwrap().unwrap() }.master(), "[::1]:29500");
    }
}
