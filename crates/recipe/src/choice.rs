//! The recipe's closed vocabularies (`run.backend`, `data.kind`, `data.task`,
//! `optimizer.kind`, `lr_schedule.kind`) as serde enums, and their names read back from the
//! enums' own serde derive, so the lists in error messages are never written a second time.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A unit-only serde enum that a recipe key names by a string.
pub trait Choice: Copy + PartialEq + Serialize + DeserializeOwned + 'static {
    /// What the key chooses, in words, for error messages (e.g. "the backend").
    const WHAT: &'static str;

    /// Every name a recipe may write, in declaration order (from the serde derive).
    fn names() -> &'static [&'static str] {
        variants::<Self>()
    }

    /// This value's name as a recipe writes it.
    fn name(self) -> &'static str {
        let written = match toml::Value::try_from(self) {
            Ok(toml::Value::String(s)) => s,
            _ => unreachable!("a Choice is a unit-only enum"),
        };
        Self::names().iter().copied().find(|n| *n == written).expect("serialised names are variant names")
    }
}

/// The variant names serde's derive gives `T`: what its `Deserialize` asks a format for.
pub fn variants<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.expect("a Choice deserializes as an enum")
}

/// A deserializer that records the variant list an enum asks for, and nothing else.
struct Probe(Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for &mut Probe {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only enums are probed"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(variants);
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

macro_rules! choices {
    ($(#[$doc:meta] $name:ident, $what:literal, $case:literal { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? })+) => {$(
        #[$doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = $case)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl Choice for $name {
            const WHAT: &'static str = $what;
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )+

        /// What the [`Choice`] whose Rust name is `enum_name` chooses, in words.
        pub(crate) fn what(enum_name: &str) -> Option<&'static str> {
            match enum_name {
                $(stringify!($name) => Some($what),)+
                _ => None,
            }
        }
    };
}

choices! {
    /// `run.backend`.
    Backend, "the backend", "kebab-case" {
        /// The embedded CPU default (flex).
        Cpu,
        /// burn's ndarray CPU backend.
        Ndarray,
        /// burn's flex CPU backend.
        Flex,
        /// burn's CUDA backend (the `cuda` cargo feature).
        Cuda,
        /// LibTorch on the CPU (the `tch` cargo feature).
        Tch,
        /// LibTorch on CUDA device `run.device` (the `tch` cargo feature).
        TchCuda,
    }
    /// `data.kind`.
    DataKind, "the dataset kind", "snake_case" {
        /// A numeric table with a label column.
        Csv,
        /// A UTF-8 text read as characters.
        Text,
        /// Seeded Gaussian blobs or a linear teacher.
        Synthetic,
        /// A folder of images (PNG, JPEG, BMP), one sub-folder per class.
        ImageFolder,
        /// Data the program registers (a burn `Dataset` and `Batcher`), named by `data.name`.
        Program,
    }
    /// `data.task`: what the label column (csv) or the generated target (synthetic) holds.
    Task, "the task", "lowercase" {
        /// Class labels: integers or strings.
        Classification,
        /// Numeric targets.
        Regression,
    }
    /// `optimizer.kind`.
    OptimizerKind, "the optimizer", "lowercase" {
        /// AdamW (decoupled weight decay).
        Adamw,
        /// SGD with optional momentum (weight decay as an L2 penalty).
        Sgd,
    }
    /// `lr_schedule.kind`.
    ScheduleKind, "the schedule", "lowercase" {
        /// The peak learning rate after warmup.
        Constant,
        /// Cosine decay to `final_lr_fraction` after warmup.
        Cosine,
        /// Linear decay to `final_lr_fraction` after warmup.
        Linear,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_serde_derive_and_read_back() {
        assert_eq!(Backend::names(), ["cpu", "ndarray", "flex", "cuda", "tch", "tch-cuda"]);
        assert_eq!(Backend::TchCuda.name(), "tch-cuda");
        assert_eq!(OptimizerKind::names(), ["adamw", "sgd"]);
        assert_eq!(ScheduleKind::Cosine.to_string(), "cosine");
        for name in DataKind::names().iter().chain(Task::names()) {
            let v: toml::Value = toml::Value::String(name.to_string());
            assert!(v.clone().try_into::<DataKind>().is_ok() || v.try_into::<Task>().is_ok(), "{name}");
        }
    }
}
