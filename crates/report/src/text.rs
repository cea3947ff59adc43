//! The terminal summary of a run.

use crate::error::ReportError;
use crate::run::Run;
use oomph_rundir::events::Event;
use oomph_rundir::RunDir;
use std::fmt::Write as _;
use std::path::Path;

/// A terminal summary of the run in `run_dir`: steps, samples, wall time, final train and
/// evaluation metrics, OOM events, restarts, resumes, time lost to recovery, the
/// micro-batch history on one line (e.g. `64 -> 32 -> 21 -> 32`), and the paths of the
/// model and of the report images.
///
/// Without `summary.json` (a running or crashed run) the figures are derived from
/// `metrics.jsonl`, `events.jsonl` and the newest checkpoint, and the text says that the run
/// did not finish.
pub fn summary_text(run_dir: &Path) -> Result<String, ReportError> {
    let run = Run::load(run_dir)?;
    Ok(format_summary(&run))
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.0}h {:02.0}m", (s / 3600.0).floor(), ((s % 3600.0) / 60.0).floor())
    } else if s >= 60.0 {
        format!("{:.0}m {:02.0}s", (s / 60.0).floor(), (s % 60.0).floor())
    } else if s >= 10.0 {
        format!("{s:.1}s")
    } else {
        format!("{s:.2}s")
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        Some(_) => "non-finite".into(),
        None => "-".into(),
    }
}

/// 1234567 -> "1,234,567".
fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn format_summary(run: &Run) -> String {
    let mut out = String::new();
    let last = run.steps.last();
    let last_eval = run.evals.last();
    let finished = run.summary.is_some();
    let _ =
        writeln!(out, "== {} ==  {}", run.name, if finished { "finished" } else { "DID NOT FINISH (no summary.json)" });
    if !finished {
        let _ = writeln!(
            out,
            "  the run is still going or stopped early; figures below are derived from \
             metrics.jsonl and events.jsonl"
        );
        if let Some(e) = run.events.iter().rev().find(|e| matches!(e.event, Event::GiveUp { .. })) {
            let _ = writeln!(out, "  gave up at step {}: {}", e.step, e.event.message().unwrap_or("(no message)"));
        }
        if let Some(e) = run.events.iter().rev().find(|e| matches!(e.event, Event::Diverged { .. })) {
            let _ = writeln!(out, "  DIVERGED at step {}: {}", e.step, e.event.message().unwrap_or("(no message)"));
        }
    }
    if run.skipped_lines > 0 {
        let _ = writeln!(out, "  skipped {} unreadable line(s) (e.g. a torn last line of a crash)", run.skipped_lines);
    }

    let mut batch = run.effective_batch.map(count).unwrap_or_else(|| "?".into());
    if run.ranks > 1 {
        let _ = write!(batch, " ({} ranks)", run.ranks);
    }
    let t = run.totals();
    let mut line = format!(
        "steps      {} | samples {} | effective batch {batch} | wall {}",
        count(t.steps),
        count(t.samples),
        secs(t.wall_s)
    );
    if let Some(s) = run.summary.as_ref().filter(|s| s.parameters > 0) {
        let _ = write!(line, " | {} parameters", count(s.parameters as u64));
    }
    let _ = writeln!(out, "{line}");

    let train_loss = match &run.summary {
        Some(s) => s.train_loss,
        None => last.map(|s| s.loss),
    };
    let (valid_loss, metrics) = match &run.summary {
        Some(s) => (s.valid_loss, s.valid_metrics.clone()),
        None => (last_eval.map(|e| e.valid_loss), last_eval.map(|e| e.metrics.clone()).unwrap_or_default()),
    };
    let mut line = format!("final      train loss {} | valid loss {}", num(train_loss), num(valid_loss));
    for (k, v) in &metrics {
        let _ = write!(line, " | valid {k} {}", num(Some(*v)));
    }
    if let Some(e) = last_eval {
        let _ = write!(line, " (eval at step {})", e.step);
    }
    let _ = writeln!(out, "{line}");

    let recovery = match (&run.summary, &run.checkpoint) {
        (Some(s), _) => secs(s.recovery_s),
        (None, Some(c)) => match c.state.as_ref().and_then(|s| s.recovery_s) {
            Some(r) => format!("{} (as of the checkpoint at step {})", secs(r), c.step),
            None => "unknown".into(),
        },
        (None, None) => "unknown (no checkpoint)".into(),
    };
    let _ = writeln!(
        out,
        "oom        oom events {} | restarts {} | resumes {} | time lost to recovery {recovery}",
        t.ooms, t.restarts, t.resumes
    );

    let skipped: Vec<usize> = run.steps.iter().filter(|s| s.skipped).map(|s| s.step).collect();
    if !skipped.is_empty() {
        let shown: Vec<String> = skipped.iter().take(10).map(usize::to_string).collect();
        let more = if skipped.len() > 10 { format!(" and {} more", skipped.len() - 10) } else { String::new() };
        let _ = writeln!(out, "non-finite {} step(s) skipped (no update): {}{more}", skipped.len(), shown.join(", "));
    }

    let hist = run.micro_batch_history();
    let hist_text = if hist.is_empty() {
        "-".to_string()
    } else {
        hist.iter().map(usize::to_string).collect::<Vec<_>>().join(" -> ")
    };
    let _ = writeln!(out, "micro-batch {hist_text}");

    let model = match &run.summary {
        Some(s) if !s.model_path.is_empty() => s.model_path.clone(),
        _ => match &run.checkpoint {
            Some(c) => format!("none yet (the run did not finish); newest checkpoint {}", c.dir.display()),
            None => "none (the run did not finish and wrote no checkpoint)".into(),
        },
    };
    let _ = writeln!(out, "model      {model}");
    let rd = RunDir::new(&run.dir);
    let (png, svg) = (rd.report_png(), rd.report_svg());
    let drawn = if png.is_file() { "" } else { " (not drawn yet: `oomph report` draws it)" };
    let _ = write!(out, "report     {}, {}{drawn}", png.display(), svg.display());
    out
}
