//! What the user sees while a run goes: an indicatif bar on a terminal, plain periodic
//! lines otherwise. All of it goes to stderr; the library never prints to stdout.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oomph_rundir::{EvalRecord, Event, EventLine, StepRecord, Summary};
use std::io::IsTerminal;

/// Receives the run's progress. The trainer calls it; front-ends decide how to show it.
pub trait Observer: Send {
    /// The run starts (or resumes) at step `start` of `total`; `lines` describe the run.
    fn start(&mut self, start: usize, total: usize, lines: &[String]);
    /// A step finished.
    fn step(&mut self, rec: &StepRecord, total: usize);
    /// An evaluation finished.
    fn eval(&mut self, rec: &EvalRecord);
    /// Something happened (OOM, shrink, grow, checkpoint, ...).
    fn event(&mut self, rec: &EventLine);
    /// The run ended.
    fn finish(&mut self, summary: &Summary);
}

/// Observer that shows nothing (tests, benchmarks).
pub struct Silent;

impl Observer for Silent {
    fn start(&mut self, _: usize, _: usize, _: &[String]) {}
    fn step(&mut self, _: &StepRecord, _: usize) {}
    fn eval(&mut self, _: &EvalRecord) {}
    fn event(&mut self, _: &EventLine) {}
    fn finish(&mut self, _: &Summary) {}
}

/// The default observer: a progress bar on a terminal, plain lines every `log_every` steps
/// otherwise (CI logs, files, a supervisor's pipe).
pub struct Console {
    bar: Option<ProgressBar>,
    log_every: usize,
    ooms: usize,
}

impl Console {
    /// A console observer; `force_plain` disables the bar even on a terminal.
    pub fn new(log_every: usize, force_plain: bool) -> Self {
        let tty = std::io::stderr().is_terminal() && !force_plain;
        let bar = tty.then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            b.set_style(
                ProgressStyle::with_template("{bar:28.cyan/blue} {pos}/{len} | {msg} | {elapsed_precise} eta {eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b
        });
        Self { bar, log_every: log_every.max(1), ooms: 0 }
    }

    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }
}

/// Formats the one-line status shown in the bar and in plain logs.
pub fn status_line(r: &StepRecord) -> String {
    let mut s = format!(
        "loss {:.4} | lr {:.2e} | micro {} x {} | {:.0} samples/s | oom {}",
        r.loss, r.lr, r.micro_batch, r.chunks, r.samples_per_sec, r.oom_events
    );
    if let (Some(u), Some(t)) = (r.mem_used, r.mem_total) {
        s.push_str(&format!(" | mem {:.1}/{:.1} GiB", u as f64 / GIB, t as f64 / GIB));
    }
    s
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

impl Observer for Console {
    fn start(&mut self, start: usize, total: usize, lines: &[String]) {
        for l in lines {
            self.line(l);
        }
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(start as u64);
            b.reset_eta();
        }
    }

    fn step(&mut self, r: &StepRecord, total: usize) {
        self.ooms = r.oom_events;
        match &self.bar {
            Some(b) => {
                b.set_position(r.step as u64);
                b.set_message(status_line(r));
            }
            None => {
                if r.step.is_multiple_of(self.log_every) || r.step == total || r.step == 1 {
                    let eta = if r.step > 0 { r.wall_s / r.step as f64 * (total - r.step) as f64 } else { 0.0 };
                    eprintln!("step {}/{} | {} | {:.1}s eta {:.0}s", r.step, total, status_line(r), r.wall_s, eta);
                }
            }
        }
    }

    fn eval(&mut self, r: &EvalRecord) {
        let mut s = format!("eval @ step {}: valid_loss {:.4}", r.step, r.valid_loss);
        for (k, v) in &r.metrics {
            s.push_str(&format!(" {k} {v:.4}"));
        }
        self.line(&s);
    }

    fn event(&mut self, r: &EventLine) {
        if !matches!(r.event, Event::Checkpoint { .. }) || self.bar.is_none() {
            self.line(&r.to_string());
        }
    }

    fn finish(&mut self, _summary: &Summary) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
