//! Seeded synthetic tabular data for tests and benchmarks.
//!
//! Classification: Gaussian blobs, one centre per class (centre coordinates ~ N(0, 2²),
//! points ~ centre + N(0, 1)), labels drawn uniformly, and a fraction `noise` of labels
//! replaced by a uniformly random class. Regression: a random linear teacher
//! `y = w·x + b + noise·ε` with `x ~ N(0, I)`, `w ~ N(0, 1/features)`, `ε ~ N(0, 1)`.
//! The output depends only on the parameters and the seed.

use crate::csv::Task;
use crate::error::DataError;
use crate::rng::{derive_seed, SplitMix64};
use crate::{Tabular, Targets};

/// Parameters of a synthetic tabular dataset (the `data.samples/features/classes/noise`
/// keys of a recipe).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Classification or regression.
    pub task: Task,
    /// Number of samples, at least 2.
    pub samples: usize,
    /// Number of features, at least 1.
    pub features: usize,
    /// Number of classes (classification), at least 2.
    pub classes: usize,
    /// Classification: fraction of labels replaced by a random class, in `[0, 1]`.
    /// Regression: standard deviation of the target noise, `>= 0`.
    pub noise: f64,
}

impl SyntheticSpec {
    fn validate(&self) -> Result<(), DataError> {
        let bad = |key, value: String, requirement| DataError::BadSynthetic { key, value, requirement };
        if self.samples < 2 {
            return Err(bad("samples", self.samples.to_string(), "at least 2"));
        }
        if self.features < 1 {
            return Err(bad("features", self.features.to_string(), "at least 1"));
        }
        if self.samples.checked_mul(self.features).is_none_or(|n| n > 1 << 31) {
            return Err(bad(
                "samples",
                self.samples.to_string(),
                "small enough that samples x features is at most 2^31",
            ));
        }
        match self.task {
            Task::Classification => {
                if !(2..=1 << 24).contains(&self.classes) {
                    return Err(bad("classes", self.classes.to_string(), "between 2 and 2^24"));
                }
                if !(0.0..=1.0).contains(&self.noise) {
                    return Err(bad(
                        "noise",
                        self.noise.to_string(),
                        "a label-noise probability in [0, 1] for classification",
                    ));
                }
            }
            Task::Regression => {
                if !(self.noise.is_finite() && self.noise >= 0.0) {
                    return Err(bad(
                        "noise",
                        self.noise.to_string(),
                        "a finite noise standard deviation >= 0 for regression",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Generate a synthetic tabular dataset (unsplit, not standardised).
pub fn synthetic_tabular(spec: &SyntheticSpec, seed: u64) -> Result<Tabular, DataError> {
    spec.validate()?;
    let mut rng = SplitMix64::new(derive_seed(seed, 0x5E7));
    let (n, d) = (spec.samples, spec.features);
    let mut features = Vec::with_capacity(n * d);
    let targets = match spec.task {
        Task::Classification => {
            let k = spec.classes;
            let centres: Vec<f64> = (0..k * d).map(|_| 2.0 * rng.normal()).collect();
            let mut labels = Vec::with_capacity(n);
            for _ in 0..n {
                let c = rng.index(k);
                for j in 0..d {
                    features.push((centres[c * d + j] + rng.normal()) as f32);
                }
                let flip = rng.next_f64() < spec.noise;
                let label = if flip { rng.index(k) } else { c };
                labels.push(label as u32);
            }
            Targets::Classes { labels, names: (0..k).map(|c| c.to_string()).collect() }
        }
        Task::Regression => {
            let scale = 1.0 / (d as f64).sqrt();
            let w: Vec<f64> = (0..d).map(|_| rng.normal() * scale).collect();
            let b = rng.normal();
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                let mut y = b;
                for wj in &w {
                    let x = rng.normal();
                    features.push(x as f32);
                    y += wj * x;
                }
                y += spec.noise * rng.normal();
                values.push(y as f32);
            }
            Targets::Values(values)
        }
    };
    Ok(Tabular { features, n_features: d, targets, feature_names: (0..d).map(|j| format!("x{j}")).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(task: Task) -> SyntheticSpec {
        SyntheticSpec { task, samples: 400, features: 3, classes: 4, noise: 0.1 }
    }

    #[test]
    fn classification_is_seeded_and_shaped() {
        let a = synthetic_tabular(&spec(Task::Classification), 1).unwrap();
        assert_eq!(a, synthetic_tabular(&spec(Task::Classification), 1).unwrap());
        assert_ne!(a, synthetic_tabular(&spec(Task::Classification), 2).unwrap());
        assert_eq!(a.len(), 400);
        assert_eq!(a.features.len(), 1200);
        let Targets::Classes { labels, names } = &a.targets else { panic!("classes") };
        assert_eq!(names.len(), 4);
        for c in 0..4 {
            assert!(labels.iter().filter(|&&l| l == c).count() > 50, "class {c} is rare");
        }
    }

    #[test]
    fn regression_follows_a_linear_teacher() {
        let s = SyntheticSpec { noise: 0.0, ..spec(Task::Regression) };
        let a = synthetic_tabular(&s, 3).unwrap();
        let Targets::Values(y) = &a.targets else { panic!("values") };
        assert_eq!(y.len(), 400);
        let var = y.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 400.0;
        assert!(var > 0.01, "targets vary: {var}");
    }

    #[test]
    fn invalid_specs_name_the_key() {
        let e =
            synthetic_tabular(&SyntheticSpec { classes: 1, ..spec(Task::Classification) }, 0).unwrap_err().to_string();
        assert!(e.contains("data.classes = 1") && e.contains("Fix:"), "{e}");
        let e =
            synthetic_tabular(&SyntheticSpec { noise: 1.5, ..spec(Task::Classification) }, 0).unwrap_err().to_string();
        assert!(e.contains("data.noise = 1.5"), "{e}");
        let e = synthetic_tabular(&SyntheticSpec { samples: 1, ..spec(Task::Regression) }, 0).unwrap_err().to_string();
        assert!(e.contains("data.samples = 1"), "{e}");
    }
}
