//! The model registry: maps a recipe's `model.kind` to a model a user or oomph provides.
//!
//! A registry is built per backend. A program adds its own kinds by implementing [`Models`];
//! oomph's binary registers the built-in ones the same way.

use crate::error::TrainError;
use crate::objective::Objective;
use crate::trainer::{train, Session};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use oomph_data::{DataInfo, Splits};
use oomph_recipe::{Recipe, RecipeError};
use oomph_rundir::Summary;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a model needs from the data loader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataNeeds {
    /// Context length for text data (windows of `seq_len + 1` tokens).
    pub seq_len: Option<usize>,
}

/// A set of model kinds a program provides. Implement it on a unit struct and pass it to
/// `oomph_cli::main_with`.
pub trait Models {
    /// Adds this program's model kinds to `registry`.
    fn register<B: AutodiffBackend>(registry: &mut Registry<B>);
}

/// A model kind whose recipe keys were parsed: ready to build for its data, once.
pub trait Prepared<B: AutodiffBackend> {
    /// What the data loader must know (e.g. the context length).
    fn needs(&self) -> DataNeeds;
    /// The model's keys with every default filled in (for the resolved recipe).
    fn resolved_params(&self) -> toml::Table;
    /// Builds the model for `data` on `device`, the backend seeded with `run.seed` first. A
    /// model that cannot take the data is a bad-input error that names both kinds.
    fn build(
        self: Box<Self>,
        recipe: &Recipe,
        origin: &str,
        data: &Splits,
        device: &B::Device,
    ) -> Result<Box<dyn Built<B>>, TrainError>;
    /// Builds the model for `data` and trains it in `session`.
    fn train(self: Box<Self>, session: Session<B>, data: &Splits) -> Result<Summary, TrainError> {
        let built = self.build(&session.recipe, &session.origin, data, &session.device)?;
        built.train(session, data)
    }
}

/// A model built for its data: ready to train.
pub trait Built<B: AutodiffBackend> {
    /// Trains on `data` in `session`.
    fn train(self: Box<Self>, session: Session<B>, data: &Splits) -> Result<Summary, TrainError>;
}

type Prepare<B> = Box<dyn Fn(&toml::Table, &str) -> Result<Box<dyn Prepared<B>>, RecipeError>>;

struct Entry<B: AutodiffBackend> {
    about: String,
    prepare: Prepare<B>,
}

/// Model kinds by name.
pub struct Registry<B: AutodiffBackend> {
    entries: BTreeMap<String, Entry<B>>,
}

impl<B: AutodiffBackend> Default for Registry<B> {
    fn default() -> Self {
        Self { entries: BTreeMap::new() }
    }
}

struct Kind<C, F> {
    config: C,
    needs: fn(&C) -> DataNeeds,
    init: F,
}

impl<B, C, M, F> Prepared<B> for Kind<C, F>
where
    B: AutodiffBackend,
    C: Serialize + 'static,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
    F: Fn(&C, &DataInfo, &B::Device) -> Result<M, String> + 'static,
{
    fn needs(&self) -> DataNeeds {
        (self.needs)(&self.config)
    }

    fn resolved_params(&self) -> toml::Table {
        toml::Table::try_from(&self.config).unwrap_or_default()
    }

    fn build(
        self: Box<Self>,
        recipe: &Recipe,
        origin: &str,
        data: &Splits,
        device: &B::Device,
    ) -> Result<Box<dyn Built<B>>, TrainError> {
        B::seed(device, recipe.run.seed);
        let model = (self.init)(&self.config, &data.info, device).map_err(|e| {
            TrainError::BadInput(format!(
                "{origin}: model.kind = \"{}\" cannot be built for this data: {e}. Fix: pick a model.kind that takes {} \
                 data, or change the [data] section to data this model takes.",
                recipe.model.kind, recipe.data.kind
            ))
        })?;
        Ok(Box::new(Model(model)))
    }
}

/// A built model of type `M`.
struct Model<M>(M);

impl<B, M> Built<B> for Model<M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    fn train(self: Box<Self>, session: Session<B>, data: &Splits) -> Result<Summary, TrainError> {
        let model = self.0;
        train(session, data, move |_| model)
    }
}

impl<B: AutodiffBackend> Registry<B> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds model kind `kind`. `C` is the model's own recipe keys (`[model]` minus `kind`),
    /// deserialised with errors that name `model.<key>`; use `#[serde(deny_unknown_fields,
    /// default)]`. It is serialised back, defaults filled in, into the resolved recipe. `needs` tells the data loader what the model needs; `init` builds the
    /// model for the loaded data on a device.
    pub fn add<C, M, F>(&mut self, kind: &str, about: &str, needs: fn(&C) -> DataNeeds, init: F)
    where
        C: DeserializeOwned + Serialize + Clone + 'static,
        M: AutodiffModule<B> + Objective<B> + 'static,
        M::InnerModule: Objective<B::InnerBackend>,
        F: Fn(&C, &DataInfo, &B::Device) -> Result<M, String> + Clone + 'static,
    {
        let prepare: Prepare<B> = Box::new(move |table: &toml::Table, origin: &str| {
            let config: C = oomph_recipe::params(table, "model", origin)?;
            Ok(Box::new(Kind { config, needs, init: init.clone() }) as Box<dyn Prepared<B>>)
        });
        self.entries.insert(kind.to_string(), Entry { about: about.to_string(), prepare });
    }

    /// The registered kinds with their one-line descriptions.
    pub fn kinds(&self) -> Vec<(String, String)> {
        self.entries.iter().map(|(k, e)| (k.clone(), e.about.clone())).collect()
    }

    /// Parses the `[model]` keys for `kind`. An unknown kind is an error that lists the
    /// registered ones.
    pub fn prepare(&self, kind: &str, params: &toml::Table, origin: &str) -> Result<Box<dyn Prepared<B>>, RecipeError> {
        match self.entries.get(kind) {
            Some(e) => (e.prepare)(params, origin),
            None => {
                let known: Vec<&str> = self.entries.keys().map(|k| k.as_str()).collect();
                Err(RecipeError {
                    origin: origin.to_string(),
                    line: None,
                    key: Some("model.kind".into()),
                    message: format!("`model.kind` = \"{kind}\" is not a registered model."),
                    fix: format!(
                        "use one of: {} (a program can register its own kinds through oomph's `Models` trait).",
                        known.join(", ")
                    ),
                })
            }
        }
    }
}
