//! The memory model: observations of peak memory against micro-batch size, optional
//! [`MemoryHint`]s, the predicted fit and the memory figures of a give-up message.

use super::{Policy, HEADROOM, MAX_OBSERVATIONS};
use serde::{Deserialize, Serialize};

/// One observation of peak memory at a micro-batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryObservation {
    /// Micro-batch size (samples).
    pub micro: usize,
    /// Peak device memory in use while running it (bytes).
    pub peak_bytes: u64,
    /// Device capacity at the time (bytes).
    pub capacity_bytes: u64,
}

/// Optional memory facts accompanying an out-of-memory, used for a predicted shrink and for
/// a precise [`GiveUp`](super::GiveUp) message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryHint {
    /// Bytes each sample of a micro-batch needs (activations, gradients).
    pub bytes_per_sample: Option<f64>,
    /// Bytes needed independently of the micro-batch (weights, optimizer state).
    pub fixed_bytes: Option<u64>,
    /// Device capacity in bytes.
    pub capacity_bytes: Option<u64>,
    /// Size of the allocation that failed, in bytes.
    pub requested_bytes: Option<u64>,
}

impl Policy {
    /// Records the peak memory of a micro-batch of `micro` samples and the device capacity.
    /// Two or more observations at different sizes give a linear memory model used to
    /// shrink straight to a predicted fit after an out-of-memory.
    pub fn observe_memory(&mut self, micro: usize, peak_bytes: u64, capacity_bytes: u64) {
        if micro == 0 || peak_bytes == 0 {
            return;
        }
        let obs = &mut self.state.observations;
        obs.retain(|o| o.micro != micro);
        obs.push(MemoryObservation { micro, peak_bytes, capacity_bytes });
        if obs.len() > MAX_OBSERVATIONS {
            let excess = obs.len() - MAX_OBSERVATIONS;
            obs.drain(..excess);
        }
    }

    /// The linear memory model `(fixed_bytes, bytes_per_sample)`: from `hint` when it gives
    /// `bytes_per_sample`, else a least-squares fit over the observations (at least two
    /// distinct sizes, positive slope).
    pub fn memory_model(&self, hint: Option<&MemoryHint>) -> Option<(f64, f64)> {
        let fit = self.fit();
        if let Some(per) = hint.and_then(|h| h.bytes_per_sample).filter(|b| b.is_finite() && *b > 0.0) {
            let fixed = hint.and_then(|h| h.fixed_bytes).map(|f| f as f64).or(fit.map(|(a, _)| a)).unwrap_or(0.0);
            return Some((fixed.max(0.0), per));
        }
        fit
    }

    fn fit(&self) -> Option<(f64, f64)> {
        let obs = &self.state.observations;
        if obs.len() < 2 {
            return None;
        }
        let k = obs.len() as f64;
        let mx = obs.iter().map(|o| o.micro as f64).sum::<f64>() / k;
        let my = obs.iter().map(|o| o.peak_bytes as f64).sum::<f64>() / k;
        let sxx: f64 = obs.iter().map(|o| (o.micro as f64 - mx).powi(2)).sum();
        let sxy: f64 = obs.iter().map(|o| (o.micro as f64 - mx) * (o.peak_bytes as f64 - my)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let b = sxy / sxx;
        if !(b.is_finite() && b > 0.0) {
            return None;
        }
        Some(((my - b * mx).max(0.0), b))
    }

    fn capacity(&self, hint: Option<&MemoryHint>) -> Option<u64> {
        hint.and_then(|h| h.capacity_bytes)
            .or_else(|| self.state.observations.last().map(|o| o.capacity_bytes))
            .filter(|&c| c > 0)
    }

    /// The largest micro-batch the memory model predicts to fit in [`HEADROOM`] of the
    /// capacity (0 if not even one sample does), or `None` without a model or a capacity.
    pub fn predicted_fit(&self, hint: Option<&MemoryHint>) -> Option<usize> {
        let (fixed, per) = self.memory_model(hint)?;
        let capacity = self.capacity(hint)? as f64;
        let budget = capacity * HEADROOM - fixed;
        if budget <= 0.0 {
            return Some(0);
        }
        let p = (budget / per).floor();
        Some(if p >= usize::MAX as f64 { usize::MAX } else { p as usize })
    }

    pub(super) fn min_reason(&self, failed: usize, hint: Option<&MemoryHint>) -> String {
        let mut parts = Vec::new();
        if let (Some((fixed, per)), Some(cap)) = (self.memory_model(hint), self.capacity(hint)) {
            let need = fixed + per * failed as f64;
            parts.push(format!(
                "The memory model estimates {} for a micro-batch of {failed} ({} fixed + {} per \
                 sample) against {} of device memory.",
                bytes(need),
                bytes(fixed),
                bytes(per),
                bytes(cap as f64)
            ));
        } else if let Some(h) = hint {
            if let (Some(req), Some(cap)) = (h.requested_bytes, h.capacity_bytes) {
                parts.push(format!(
                    "The failed allocation requested {} on a device with {} in total.",
                    bytes(req as f64),
                    bytes(cap as f64)
                ));
            } else if let Some(req) = h.requested_bytes {
                parts.push(format!("The failed allocation requested {}.", bytes(req as f64)));
            }
        }
        if parts.is_empty() {
            parts.push("No memory statistics were available to say by how much.".to_string());
        }
        if self.lo != self.cfg.min {
            parts.push(format!(
                "(With an effective batch of {}, the smallest micro-batch limit at or above the \
                 minimum is {}.)",
                self.n(),
                self.lo
            ));
        }
        parts.join(" ")
    }
}

/// Human-readable bytes (binary units).
fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b.max(0.0);
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
