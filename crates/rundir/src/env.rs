//! The environment variables through which a supervisor tells its worker what to do
//! differently: [`WorkerEnv`] is set on the worker's command with [`WorkerEnv::apply`] and read
//! back in the worker with [`WorkerEnv::from_env`].

use std::process::Command;

/// Marks a supervised worker process (`1`).
pub const WORKER: &str = "OOMPH_WORKER";
/// The micro-batch a previous worker died at: the policy's ceiling goes below it.
pub const LOWER_CEILING: &str = "OOMPH_LOWER_CEILING";
/// Restarts so far.
pub const RESTARTS: &str = "OOMPH_RESTARTS";
/// The evaluation batch a previous worker died at: evaluation runs below it.
pub const LOWER_EVAL: &str = "OOMPH_LOWER_EVAL";
/// A previous worker died inside an optimizer update: the first update runs in place (`1`).
pub const IN_PLACE_UPDATE: &str = "OOMPH_IN_PLACE_UPDATE";
/// Overrides `--resume` for a restarted worker (`auto`).
pub const RESUME: &str = "OOMPH_RESUME";
/// The descriptor of the run directory's locked `oomph.lock` that the worker inherits.
pub const LOCK_FD: &str = "OOMPH_LOCK_FD";
/// The command replaces the run in the directory (`--resume never --overwrite`) and no worker
/// has done it yet (`1`): the worker removes the old run once its recipe, data, model and
/// device are known good.
pub const REPLACE: &str = "OOMPH_REPLACE";

/// Every variable of [`WorkerEnv`].
pub(crate) const ALL: &[&str] =
    &[WORKER, LOWER_CEILING, RESTARTS, LOWER_EVAL, IN_PLACE_UPDATE, RESUME, LOCK_FD, REPLACE];

/// What a supervisor hands to its worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerEnv {
    /// Overrides `--resume` (the same syntax: `auto`, `never` or a step): a restarted worker
    /// resumes from the newest intact checkpoint, whatever the first one was asked.
    pub resume: Option<String>,
    /// Lower the micro-batch ceiling below this size.
    pub lower_ceiling: Option<usize>,
    /// Evaluate below this evaluation batch.
    pub lower_eval: Option<usize>,
    /// Run the first optimizer update in place.
    pub in_place_update: bool,
    /// Restarts so far.
    pub restarts: usize,
    /// The inherited descriptor of the locked `oomph.lock`.
    pub lock_fd: Option<i32>,
    /// Remove the old run in the directory before training (no worker has yet).
    pub replace: bool,
}

impl WorkerEnv {
    /// Whether this process is a supervised worker ([`WORKER`] is set).
    pub fn is_worker() -> bool {
        std::env::var_os(WORKER).is_some()
    }

    /// Reads this process's environment (a value that does not parse counts as unset).
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get` (the environment, or a map in tests).
    pub(crate) fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |name: &str| get(name).and_then(|v| v.trim().parse().ok());
        Self {
            resume: get(RESUME),
            lower_ceiling: num(LOWER_CEILING),
            lower_eval: num(LOWER_EVAL),
            in_place_update: get(IN_PLACE_UPDATE).is_some(),
            restarts: num(RESTARTS).unwrap_or(0),
            lock_fd: get(LOCK_FD).and_then(|v| v.trim().parse().ok()),
            replace: get(REPLACE).is_some(),
        }
    }

    /// The variables to set, as (name, value) pairs; [`WORKER`] always, the others when set.
    pub(crate) fn vars(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![(WORKER, "1".to_string()), (RESTARTS, self.restarts.to_string())];
        if let Some(r) = &self.resume {
            v.push((RESUME, r.clone()));
        }
        if let Some(m) = self.lower_ceiling {
            v.push((LOWER_CEILING, m.to_string()));
        }
        if let Some(e) = self.lower_eval {
            v.push((LOWER_EVAL, e.to_string()));
        }
        if self.in_place_update {
            v.push((IN_PLACE_UPDATE, "1".to_string()));
        }
        if let Some(fd) = self.lock_fd {
            v.push((LOCK_FD, fd.to_string()));
        }
        if self.replace {
            v.push((REPLACE, "1".to_string()));
        }
        v
    }

    /// Sets the worker's environment on `cmd`: [`WORKER`] and what is set here; the other
    /// variables are removed, so the worker sees exactly this (not what the supervisor itself
    /// inherited).
    pub fn apply(&self, cmd: &mut Command) {
        for name in ALL {
            cmd.env_remove(name);
        }
        for (name, value) in self.vars() {
            cmd.env(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn what_the_supervisor_applies_the_worker_reads() {
        let envs = [
            WorkerEnv::default(),
            WorkerEnv {
                resume: Some("auto".into()),
                lower_ceiling: Some(32),
                lower_eval: Some(64),
                in_place_update: true,
                restarts: 2,
                lock_fd: Some(5),
                replace: true,
            },
        ];
        for e in envs {
            let mut cmd = Command::new("true");
            cmd.env(LOWER_EVAL, "999");
            e.apply(&mut cmd);
            let set: HashMap<String, Option<String>> = cmd
                .get_envs()
                .map(|(k, v)| (k.to_string_lossy().into(), v.map(|v| v.to_string_lossy().into())))
                .collect();
            assert_eq!(set.get(WORKER), Some(&Some("1".to_string())));
            let back = WorkerEnv::from_vars(|name| set.get(name).cloned().flatten());
            assert_eq!(back, e);
        }
    }

    #[test]
    fn the_names_stay_the_same() {
        assert_eq!(
            ALL,
            [
                "OOMPH_WORKER",
                "OOMPH_LOWER_CEILING",
                "OOMPH_RESTARTS",
                "OOMPH_LOWER_EVAL",
                "OOMPH_IN_PLACE_UPDATE",
                "OOMPH_RESUME",
                "OOMPH_LOCK_FD",
                "OOMPH_REPLACE"
            ]
        );
        let e = WorkerEnv::from_vars(|name| (name == LOWER_CEILING).then(|| "not a number".to_string()));
        assert_eq!(e, WorkerEnv::default(), "a value that does not parse counts as unset");
    }
}
