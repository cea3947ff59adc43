//! Semantic validation: the rules a well-typed recipe must still satisfy, each refused with
//! the key, the bad value, the reason and a fix. Also fills the one derived default
//! (`training.steps = 100` when neither `steps` nor `epochs` is given).

use crate::bytes::parse_bytes;
use crate::choice::{Backend, DataKind, Task};
use crate::error::{Ctx, RecipeError};
use crate::keys::did_you_mean;
use crate::schema::{consecutive_devices, MicroInitial, PerRank, Phase, Recipe};
use std::path::Path;

/// Run length used when a recipe gives neither `training.steps` nor `training.epochs`.
pub const DEFAULT_STEPS: usize = 100;

type R = Result<(), RecipeError>;

pub(crate) fn one_of(cx: &Ctx, key: &str, value: &str, allowed: &[&str], what: &str) -> R {
    if allowed.contains(&value) {
        return Ok(());
    }
    let list = allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let hint =
        did_you_mean(value, allowed.iter().copied()).map(|s| format!("did you mean \"{s}\"? ")).unwrap_or_default();
    Err(cx.invalid(
        key,
        format!("{value:?}"),
        &format!("{what} must be one of {list}"),
        format!("{hint}{} {key} to one of {list}", if hint.is_empty() { "set" } else { "Set" }),
    ))
}

fn at_least(cx: &Ctx, key: &str, value: usize, min: usize, why: &str, example: usize) -> R {
    if value >= min {
        return Ok(());
    }
    let what = if min == 1 { "a positive integer".to_owned() } else { format!("an integer >= {min}") };
    Err(cx.invalid(key, value, why, format!("set {key} to {what} such as {example}")))
}

fn positive_finite(cx: &Ctx, key: &str, value: f64, why: &str, example: &str) -> R {
    if value.is_finite() && value > 0.0 {
        return Ok(());
    }
    Err(cx.invalid(key, format!("{value:?}"), why, format!("set {key} to a finite number > 0 such as {example}")))
}

fn non_negative_finite(cx: &Ctx, key: &str, value: f64, why: &str, example: &str) -> R {
    if value.is_finite() && value >= 0.0 {
        return Ok(());
    }
    Err(cx.invalid(key, format!("{value:?}"), why, format!("set {key} to a finite number >= 0 such as {example}")))
}

/// `value` in `[0, 1)` (`closed`: `[0, 1]`).
fn unit_interval(cx: &Ctx, key: &str, shown: &str, value: f64, closed: bool, why: &str, example: &str) -> R {
    let ok = value >= 0.0 && if closed { value <= 1.0 } else { value < 1.0 };
    if ok {
        return Ok(());
    }
    let range = if closed { "between 0 and 1 inclusive" } else { "at least 0 and below 1" };
    Err(cx.invalid(key, shown, why, format!("set {key} to a number {range}, such as {example}")))
}

/// Checks every rule on `r`, filling `training.steps` when no run length is given.
/// `data.path` must already be resolved (it is checked to exist as written).
pub(crate) fn check(r: &mut Recipe, cx: &Ctx) -> R {
    run(r, cx)?;
    model(r, cx)?;
    data(r, cx)?;
    optimizer(r, cx)?;
    lr_schedule(r, cx)?;
    training(r, cx)?;
    micro_batch(r, cx)?;
    checkpoint(r, cx)?;
    distributed(r, cx)?;
    faults(r, cx)
}

fn run(r: &Recipe, cx: &Ctx) -> R {
    let run = &r.run;
    let name = run.name.as_str();
    if name.trim().is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(cx.invalid(
            "run.name",
            format!("{name:?}"),
            "the name becomes a directory inside run.output_dir, so it must be non-empty and \
             contain no path separators",
            "set run.name to a plain name such as \"mlp-debug\"",
        ));
    }
    if run.output_dir.trim().is_empty() {
        return Err(cx.invalid(
            "run.output_dir",
            "\"\"",
            "run directories are created inside it",
            "set run.output_dir to a directory such as \"runs\"",
        ));
    }
    if run.seed > i64::MAX as u64 {
        return Err(cx.invalid(
            "run.seed",
            run.seed,
            "TOML integers are signed 64-bit, so the resolved recipe could not record this seed",
            format!("set run.seed to an integer at most {}", i64::MAX),
        ));
    }
    at_least(cx, "run.log_every", run.log_every, 1, "a log line every 0 steps is meaningless", 10)?;
    if let Some(limit) = &run.gpu_memory_limit {
        match parse_bytes(limit) {
            Ok(0) => {
                return Err(cx.invalid(
                    "run.gpu_memory_limit",
                    format!("{limit:?}"),
                    "a memory limit of zero bytes leaves nothing to train with",
                    "set run.gpu_memory_limit to a size such as \"8GiB\", or remove it to use the whole device",
                ))
            }
            Ok(_) => {}
            Err(why) => {
                return Err(cx.invalid(
                    "run.gpu_memory_limit",
                    format!("{limit:?}"),
                    &format!("it is not a byte size: {why}"),
                    "set run.gpu_memory_limit to a size such as \"8GiB\", \"512MiB\" or \"8GB\", or remove it",
                ))
            }
        }
    }
    Ok(())
}

fn model(r: &Recipe, cx: &Ctx) -> R {
    if r.model.kind.trim().is_empty() {
        return Err(cx.invalid(
            "model.kind",
            "\"\"",
            "the model kind selects which registered model is built",
            "set model.kind to a registered model such as \"mlp\" or \"gpt\"",
        ));
    }
    Ok(())
}

fn data(r: &Recipe, cx: &Ctx) -> R {
    let d = &r.data;
    let program = d.kind == DataKind::Program;
    match (&d.name, program) {
        (None, true) => {
            return Err(RecipeError::new(
                cx.origin("data.kind"),
                Some("data.name".into()),
                "`data.name` is missing: data.kind = \"program\" loads data the program registers, by name",
                "set data.name to one of the program's data kinds (an unknown name lists them)",
            ))
        }
        (Some(name), false) => {
            return Err(cx.invalid(
                "data.name",
                format!("{name:?}"),
                &format!("it names a program's data kind, but data.kind = \"{}\" is built in", d.kind),
                "remove data.name, or set data.kind = \"program\" to load the program's data of that name",
            ))
        }
        _ => {}
    }
    if !matches!(d.kind, DataKind::Synthetic | DataKind::Program) && d.path.is_none() {
        return Err(RecipeError::new(
            cx.origin("data.kind"),
            Some("data.path".into()),
            format!("`data.path` is missing: data.kind = \"{}\" reads its samples from a file", d.kind),
            "set data.path to the file, relative to the recipe file's directory, or use data.kind = \"synthetic\"",
        ));
    }
    if let Some(path) = &d.path {
        let p = Path::new(path);
        if !p.exists() {
            return Err(cx.invalid(
                "data.path",
                format!("{path:?}"),
                if matches!(d.kind, DataKind::ImageFolder | DataKind::Program) {
                    "no such file or folder (a path in the recipe file is relative to the recipe file's directory; \
                     one given with --set is relative to the current directory)"
                } else {
                    "no such file (a path in the recipe file is relative to the recipe file's directory; one given \
                     with --set is relative to the current directory)"
                },
                if d.kind == DataKind::ImageFolder {
                    "point data.path at an existing folder"
                } else {
                    "point data.path at an existing file"
                },
            ));
        }
        if d.kind == DataKind::ImageFolder && !p.is_dir() {
            return Err(cx.invalid(
                "data.path",
                format!("{path:?}"),
                "it is not a folder: data.kind = \"image_folder\" reads a folder with one sub-folder of images per class",
                "point data.path at the folder that holds the class sub-folders",
            ));
        }
        if !p.is_file() && !program && d.kind != DataKind::ImageFolder {
            return Err(cx.invalid(
                "data.path",
                format!("{path:?}"),
                "it is not a regular file",
                "point data.path at a data file, not a directory",
            ));
        }
    }
    unit_interval(
        cx,
        "data.valid_fraction",
        &format!("{:?}", d.valid_fraction),
        d.valid_fraction,
        false,
        "it is the fraction of samples held out for validation, and some must remain for training",
        "0.1",
    )?;
    non_negative_finite(cx, "data.noise", d.noise, "noise is a standard deviation / flip probability", "0.1")?;
    if d.kind == DataKind::Synthetic {
        at_least(cx, "data.samples", d.samples, 2, "a synthetic dataset needs samples to train and validate on", 2048)?;
        at_least(cx, "data.features", d.features, 1, "a sample needs at least one feature", 16)?;
        if d.task == Task::Classification {
            at_least(cx, "data.classes", d.classes, 2, "classification needs at least two classes", 4)?;
        }
    }
    Ok(())
}

fn optimizer(r: &Recipe, cx: &Ctx) -> R {
    let o = &r.optimizer;
    positive_finite(cx, "optimizer.lr", o.lr, "the learning rate must be a finite number above zero", "0.001")?;
    non_negative_finite(cx, "optimizer.weight_decay", o.weight_decay, "weight decay cannot be negative", "0.01")?;
    let betas = format!("[{:?}, {:?}]", o.betas[0], o.betas[1]);
    for (i, b) in o.betas.iter().enumerate() {
        if !(0.0..1.0).contains(b) {
            return Err(cx.invalid(
                "optimizer.betas",
                &betas,
                &format!("beta{} is a moving-average decay and must lie in [0, 1)", i + 1),
                "set optimizer.betas to two numbers, each at least 0 and below 1, such as [0.9, 0.999]",
            ));
        }
    }
    positive_finite(cx, "optimizer.eps", o.eps, "epsilon guards a division and must be above zero", "1e-8")?;
    unit_interval(
        cx,
        "optimizer.momentum",
        &format!("{:?}", o.momentum),
        o.momentum,
        false,
        "momentum must lie in [0, 1) for the update to stay bounded",
        "0.9",
    )?;
    if let Some(c) = o.grad_clip_norm {
        positive_finite(
            cx,
            "optimizer.grad_clip_norm",
            c,
            "gradients are clipped to this L2 norm, which must be a finite number above zero",
            "1.0 (or remove the key to disable clipping)",
        )?;
    }
    Ok(())
}

fn lr_schedule(r: &Recipe, cx: &Ctx) -> R {
    let s = &r.lr_schedule;
    unit_interval(
        cx,
        "lr_schedule.final_lr_fraction",
        &format!("{:?}", s.final_lr_fraction),
        s.final_lr_fraction,
        true,
        "it is the final learning rate as a fraction of optimizer.lr",
        "0.1",
    )
}

fn training(r: &mut Recipe, cx: &Ctx) -> R {
    let t = &mut r.training;
    match (t.steps, t.epochs) {
        (Some(s), Some(e)) => {
            return Err(RecipeError::new(
                cx.origin("training.epochs"),
                Some("training.epochs".into()),
                format!(
                    "`training.steps` = {s} and `training.epochs` = {e} are both set: a run's length is \
                     given in steps or in epochs, not both"
                ),
                "remove one of them (steps counts optimizer steps, epochs counts passes over the training split)",
            ))
        }
        (None, None) => t.steps = Some(DEFAULT_STEPS),
        _ => {}
    }
    if let Some(s) = t.steps {
        at_least(cx, "training.steps", s, 1, "a run must take at least one optimizer step", 100)?;
    }
    if let Some(e) = t.epochs {
        at_least(cx, "training.epochs", e, 1, "a run must make at least one pass over the data", 1)?;
    }
    at_least(
        cx,
        "training.effective_batch",
        t.effective_batch,
        1,
        "an optimizer step must consume at least one sample",
        32,
    )?;
    if let Some(b) = t.eval_batch {
        at_least(cx, "training.eval_batch", b, 1, "evaluation must process at least one sample at a time", 64)?;
    }
    at_least(
        cx,
        "training.max_nonfinite_steps",
        t.max_nonfinite_steps,
        1,
        "a run must tolerate at least one skipped non-finite step before it stops",
        10,
    )?;
    Ok(())
}

fn micro_batch(r: &Recipe, cx: &Ctx) -> R {
    let m = &r.micro_batch;
    let eb = r.training.effective_batch;
    at_least(cx, "micro_batch.min", m.min, 1, "a micro-batch must hold at least one sample", 1)?;
    if let Some(max) = m.max {
        at_least(cx, "micro_batch.max", max, 1, "a micro-batch must hold at least one sample", eb.max(1))?;
        if m.min > max {
            return Err(cx.invalid(
                "micro_batch.min",
                m.min,
                &format!("it is larger than micro_batch.max = {max}, so no micro-batch size is allowed"),
                format!("set micro_batch.min to at most {max}, or raise micro_batch.max"),
            ));
        }
    }
    if m.min > eb {
        return Err(cx.invalid(
            "micro_batch.min",
            m.min,
            &format!(
                "it is larger than training.effective_batch = {eb}, and a micro-batch never holds more \
                 samples than the step"
            ),
            format!("set micro_batch.min to at most {eb}, or raise training.effective_batch"),
        ));
    }
    if let MicroInitial::Fixed(i) = m.initial {
        at_least(cx, "micro_batch.initial", i, 1, "a micro-batch must hold at least one sample", eb.max(1))?;
        if i < m.min {
            return Err(cx.invalid(
                "micro_batch.initial",
                i,
                &format!("it is below micro_batch.min = {}", m.min),
                format!("set micro_batch.initial to at least {}, or to \"auto\"", m.min),
            ));
        }
        if let Some(max) = m.max {
            if i > max {
                return Err(cx.invalid(
                    "micro_batch.initial",
                    i,
                    &format!("it is above micro_batch.max = {max}"),
                    format!("set micro_batch.initial to at most {max}, or to \"auto\""),
                ));
            }
        }
    }
    at_least(
        cx,
        "micro_batch.grow_after",
        m.grow_after,
        1,
        "it counts clean steps before trying a larger micro-batch",
        50,
    )?;
    at_least(
        cx,
        "micro_batch.max_retries_per_step",
        m.max_retries_per_step,
        1,
        "a step that hits an OOM must be allowed at least one retry at a smaller micro-batch",
        8,
    )
}

fn checkpoint(r: &Recipe, cx: &Ctx) -> R {
    at_least(
        cx,
        "checkpoint.keep",
        r.checkpoint.keep,
        2,
        "the newest checkpoint may be the one being written, or may turn out corrupt, so an older \
         complete one must be kept as a fallback",
        3,
    )
}

/// A list of integers as TOML text.
fn list_text(values: &[usize]) -> String {
    let items: Vec<String> = values.iter().map(usize::to_string).collect();
    format!("[{}]", items.join(", "))
}

fn distributed(r: &Recipe, cx: &Ctx) -> R {
    let d = &r.distributed;
    let eb = r.training.effective_batch;
    at_least(cx, "distributed.ranks", d.ranks, 1, "training needs at least one rank", 1)?;
    if d.ranks > eb {
        return Err(cx.invalid(
            "distributed.ranks",
            d.ranks,
            &format!("every rank needs at least one sample of each step, and training.effective_batch = {eb}"),
            format!("set distributed.ranks to at most {eb}, or raise training.effective_batch"),
        ));
    }
    let shard = eb.div_ceil(d.ranks.max(1));
    if d.ranks > 1 && r.micro_batch.min > shard {
        return Err(cx.invalid(
            "micro_batch.min",
            r.micro_batch.min,
            &format!(
                "with distributed.ranks = {} each rank trains a shard of at most {shard} of the \
                 training.effective_batch = {eb} samples, and a micro-batch never holds more than its shard",
                d.ranks
            ),
            format!("set micro_batch.min to at most {shard}, or use fewer ranks"),
        ));
    }
    if !d.devices.is_empty() {
        let shown = list_text(&d.devices);
        if d.devices.len() != d.ranks {
            return Err(cx.invalid(
                "distributed.devices",
                &shown,
                &format!(
                    "it lists {} device{}, but distributed.ranks = {} and each rank needs one",
                    d.devices.len(),
                    if d.devices.len() == 1 { "" } else { "s" },
                    d.ranks
                ),
                format!(
                    "list {} distinct device indices, one per rank, or remove distributed.devices to use devices {} \
                     (counting up from run.device)",
                    d.ranks,
                    list_text(&consecutive_devices(r.run.device, d.ranks))
                ),
            ));
        }
        if let Some((i, dup)) = d.devices.iter().enumerate().find(|(i, v)| d.devices[..*i].contains(v)) {
            return Err(cx.invalid(
                "distributed.devices",
                &shown,
                &format!(
                    "device {dup} is listed twice (entry {i} repeats it), and each rank needs a device of its own"
                ),
                "list distinct device indices, one per rank",
            ));
        }
    }
    positive_finite(
        cx,
        "distributed.timeout_s",
        d.timeout_s,
        "it is the deadline of every collective call, in seconds",
        "300.0",
    )
}

/// `faults.<key>`'s `rank` (when set) names one of the run's ranks.
fn rank_below(cx: &Ctx, key: &str, rank: Option<usize>, ranks: usize) -> R {
    match rank {
        Some(rank) if rank >= ranks => Err(cx.invalid(
            &format!("{key}.rank"),
            rank,
            &format!("ranks are numbered from 0 and distributed.ranks = {ranks}"),
            format!(
                "set {key}.rank to a rank below {ranks}, remove it to fire on every rank, or raise distributed.ranks"
            ),
        )),
        _ => Ok(()),
    }
}

fn faults(r: &Recipe, cx: &Ctx) -> R {
    let f = &r.faults;
    let ranks = r.distributed.ranks;
    let zero = "a simulated capacity of zero samples fits no micro-batch at all";
    match &f.simulate_memory_samples {
        None => {}
        Some(PerRank::All(s)) => at_least(cx, "faults.simulate_memory_samples", *s, 1, zero, 16)?,
        Some(PerRank::Each(list)) => {
            if list.len() != ranks {
                return Err(cx.invalid(
                    "faults.simulate_memory_samples",
                    list_text(list),
                    &format!(
                        "an array gives one capacity per rank, and it has {} for distributed.ranks = {ranks}",
                        list.len()
                    ),
                    format!("give {ranks} capacities, one per rank, or one integer for every rank (such as 16)"),
                ));
            }
            for (i, &s) in list.iter().enumerate() {
                at_least(cx, &format!("faults.simulate_memory_samples[{i}]"), s, 1, zero, 16)?;
            }
        }
    }
    for (i, c) in f.simulate_memory_changes.iter().enumerate() {
        at_least(cx, &format!("faults.simulate_memory_changes[{i}].step"), c.step, 1, "steps count from 1", 1)?;
        at_least(cx, &format!("faults.simulate_memory_changes[{i}].samples"), c.samples, 1, zero, 16)?;
        rank_below(cx, &format!("faults.simulate_memory_changes[{i}]"), c.rank, ranks)?;
    }
    for (name, list) in
        [("oom_at", &f.oom_at), ("panic_at", &f.panic_at), ("die_at", &f.die_at), ("abort_at", &f.abort_at)]
    {
        for (i, fa) in list.iter().enumerate() {
            at_least(cx, &format!("faults.{name}[{i}].step"), fa.step, 1, "steps count from 1", 1)?;
            rank_below(cx, &format!("faults.{name}[{i}]"), fa.rank, ranks)?;
            if fa.phase == Phase::Checkpoint && fa.rank.is_some_and(|r| r > 0) {
                return Err(cx.invalid(
                    &format!("faults.{name}[{i}].rank"),
                    fa.rank.unwrap_or(0),
                    "checkpoints are written by rank 0 alone, so a fault in phase \"checkpoint\" can only fire there",
                    format!("set faults.{name}[{i}].rank = 0, or remove it"),
                ));
            }
            if fa.phase == Phase::Checkpoint && !matches!(name, "die_at" | "abort_at") {
                return Err(cx.invalid(
                    &format!("faults.{name}[{i}].phase"),
                    "\"checkpoint\"",
                    "a checkpoint is written off the training loop, where an in-process fault cannot be recovered",
                    format!(
                        "use phase \"forward\", \"backward\", \"optimizer\" or \"eval\" for faults.{name} \
                         (faults.die_at and faults.disk_full_at simulate failures while checkpointing)"
                    ),
                ));
            }
        }
    }
    for (name, list) in [("nan_at", &f.nan_at), ("disk_full_at", &f.disk_full_at)] {
        for (i, &s) in list.iter().enumerate() {
            at_least(cx, &format!("faults.{name}[{i}]"), s, 1, "steps count from 1", 1)?;
        }
    }
    if let Some(h) = &f.address_space_headroom {
        let size_fix = "write a size such as \"256MiB\", or remove the key";
        let problem = match parse_bytes(h) {
            // A GPU runtime maps and reserves address space as it goes (contexts, handles,
            // modules): under the limit those fail as memory errors that no smaller
            // micro-batch fixes.
            Ok(_) if matches!(r.run.backend, Backend::Cuda | Backend::TchCuda) => Some((
                format!("the limit is for the CPU backends, and run.backend = \"{}\" is a GPU one", r.run.backend),
                "remove the key, or set run.backend to a CPU backend (\"cpu\", \"tch\")",
            )),
            Ok(0) => Some(("a headroom of zero bytes leaves nothing to allocate".to_string(), size_fix)),
            Ok(_) => None,
            Err(e) => Some((e, size_fix)),
        };
        if let Some((why, fix)) = problem {
            return Err(cx.invalid("faults.address_space_headroom", format!("{h:?}"), &why, fix));
        }
    }
    Ok(())
}
