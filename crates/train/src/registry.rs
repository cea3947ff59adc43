//! The model registry: maps a recipe's `model.kind` to a model a user or oomph provides.
//!
//! A registry is built per backend. A program adds its own kinds by implementing [`Models`];
//! oomph's binary registers the built-in ones the same way. A program may also register its
//! own data ([`Registry::add_data`]): a burn `Dataset` and `Batcher` that a recipe names with
//! `data.kind = "program"` and `data.name`.

use crate::error::TrainError;
use crate::feed::{feeds_for, Data};
use crate::objective::Objective;
use crate::trainer::{train, Session};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use oomph_data::DataInfo;
use oomph_recipe::{DataKind, DataSection, Recipe, RecipeError};
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

/// What a program's data loader is asked for ([`Registry::add_data`]).
#[derive(Debug, Clone, Copy)]
pub struct DataRequest<'a> {
    /// The recipe's `[data]` section (`path` already resolved against the recipe's directory).
    pub section: &'a DataSection,
    /// The run seed (for a seeded split or generated data).
    pub seed: u64,
    /// What the model needs from the data (e.g. its context length).
    pub needs: DataNeeds,
}

/// A set of model kinds (and data) a program provides. Implement it on a unit struct and pass
/// it to `oomph::main!`.
pub trait Models {
    /// Adds this program's model kinds (and data kinds) to `registry`.
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
        data: &Data<B>,
        device: &B::Device,
    ) -> Result<Box<dyn Built<B>>, TrainError>;
    /// Builds the model for `data` and trains it in `session`.
    fn train(self: Box<Self>, session: Session<B>, data: &Data<B>) -> Result<Summary, TrainError> {
        let built = self.build(&session.recipe, &session.origin, data, &session.device)?;
        built.train(session, data)
    }
}

/// A model built for its data: ready to train.
pub trait Built<B: AutodiffBackend> {
    /// Trains on `data` in `session`.
    fn train(self: Box<Self>, session: Session<B>, data: &Data<B>) -> Result<Summary, TrainError>;
}

type Prepare<B> = Box<dyn Fn(&toml::Table, &str) -> Result<Box<dyn Prepared<B>>, RecipeError>>;
type Load<B> = Box<dyn Fn(&DataRequest) -> Result<Data<B>, String>>;

struct Entry<B: AutodiffBackend> {
    about: String,
    prepare: Prepare<B>,
}

struct DataEntry<B: AutodiffBackend> {
    about: String,
    load: Load<B>,
}

/// Model kinds and program data by name.
pub struct Registry<B: AutodiffBackend> {
    entries: BTreeMap<String, Entry<B>>,
    data: BTreeMap<String, DataEntry<B>>,
}

impl<B: AutodiffBackend> Default for Registry<B> {
    fn default() -> Self {
        Self { entries: BTreeMap::new(), data: BTreeMap::new() }
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
        data: &Data<B>,
        device: &B::Device,
    ) -> Result<Box<dyn Built<B>>, TrainError> {
        // The model and the data meet by type: refused before anything is built.
        feeds_for::<B, M>(data, recipe, origin)?;
        B::seed(device, recipe.run.seed);
        let model = (self.init)(&self.config, &data.info, device).map_err(|e| {
            TrainError::BadInput(format!(
                "{origin}: model.kind = \"{}\" cannot be built: {e}. Fix: if a [model] key is named, correct it; if it \
                 is the data, pick a model.kind that takes {} data, or change the [data] section to data this model \
                 takes.",
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
    fn train(self: Box<Self>, session: Session<B>, data: &Data<B>) -> Result<Summary, TrainError> {
        let model = self.0;
        train(session, data, move |_| model)
    }
}

impl<B: AutodiffBackend> Registry<B> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds model kind `kind`, described in one line. `C` is the model's own recipe keys
    /// (`[model]` minus `kind`), deserialised with errors that name `model.<key>`; use
    /// `#[serde(deny_unknown_fields, default)]`. It is serialised back, defaults filled in,
    /// into the resolved recipe. `init` builds the model for the loaded data on a device, or
    /// says in one sentence why it cannot.
    pub fn add<C, M, F>(&mut self, kind: &str, about: &str, init: F)
    where
        C: DeserializeOwned + Serialize + Clone + 'static,
        M: AutodiffModule<B> + Objective<B> + 'static,
        M::InnerModule: Objective<B::InnerBackend>,
        F: Fn(&C, &DataInfo, &B::Device) -> Result<M, String> + Clone + 'static,
    {
        self.add_with_needs(kind, about, |_: &C| DataNeeds::default(), init);
    }

    /// [`Registry::add`] for a model that tells the data loader what it needs (e.g. the
    /// context length of a sequence model, which cuts `text` data into windows).
    pub fn add_with_needs<C, M, F>(&mut self, kind: &str, about: &str, needs: fn(&C) -> DataNeeds, init: F)
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

    /// Adds program data `name`, which a recipe loads with `data.kind = "program"` and
    /// `data.name = "<name>"`. `load` builds it (usually [`Data::program`] over a burn
    /// `Dataset` and `Batcher` for each split) or says in one sentence why it cannot.
    pub fn add_data<F>(&mut self, name: &str, about: &str, load: F)
    where
        F: Fn(&DataRequest) -> Result<Data<B>, String> + 'static,
    {
        self.data.insert(name.to_string(), DataEntry { about: about.to_string(), load: Box::new(load) });
    }

    /// The registered kinds with their one-line descriptions.
    pub fn kinds(&self) -> Vec<(String, String)> {
        self.entries.iter().map(|(k, e)| (k.clone(), e.about.clone())).collect()
    }

    /// The registered program data with their one-line descriptions.
    pub fn data_kinds(&self) -> Vec<(String, String)> {
        self.data.iter().map(|(k, e)| (k.clone(), e.about.clone())).collect()
    }

    /// Checks that program data named by the recipe is registered (nothing is loaded).
    pub fn check_data(&self, recipe: &Recipe, origin: &str) -> Result<(), TrainError> {
        let (DataKind::Program, Some(name)) = (recipe.data.kind, &recipe.data.name) else { return Ok(()) };
        if self.data.contains_key(name) {
            return Ok(());
        }
        let known: Vec<String> = self.data.keys().map(|k| format!("\"{k}\"")).collect();
        let fix = if known.is_empty() {
            "this program registers no data of its own: use a built-in data.kind (csv, text, synthetic, \
             image_folder), or run the program that registers it"
                .to_string()
        } else {
            format!("use one of: {} (registered with `Registry::add_data`)", known.join(", "))
        };
        Err(TrainError::BadInput(format!(
            "{origin}: `data.name` = \"{name}\" is not data this program registers. Fix: {fix}."
        )))
    }

    /// Loads the recipe's data: a built-in kind through `oomph_data`, program data through its
    /// registered loader. `needs` is what the model needs from it.
    pub fn load_data(&self, recipe: &Recipe, origin: &str, needs: DataNeeds) -> Result<Data<B>, TrainError> {
        let section = &recipe.data;
        let bad = |e: oomph_data::DataError| TrainError::BadInput(format!("{origin}: {e}"));
        let name = match (section.kind, &section.name) {
            (DataKind::Program, Some(name)) => name,
            (DataKind::ImageFolder, _) => {
                let root = section.path.as_deref().map(std::path::Path::new);
                let root = root.ok_or(oomph_data::DataError::MissingPath { kind: section.kind }).map_err(bad)?;
                return crate::feed::images::load(root, section.valid_fraction, recipe.run.seed).map_err(bad);
            }
            // Without a name (which validation refuses), oomph_data says what is missing.
            (DataKind::Csv | DataKind::Text | DataKind::Synthetic, _) | (DataKind::Program, None) => {
                return oomph_data::load(section, recipe.run.seed, needs.seq_len).map(Data::from_splits).map_err(bad)
            }
        };
        self.check_data(recipe, origin)?;
        let request = DataRequest { section, seed: recipe.run.seed, needs };
        let load = &self.data[name].load;
        let loaded = crate::recovery::quietly(|| load(&request))
            .unwrap_or_else(|panic| Err(format!("its loader panicked ({panic})")));
        let data = loaded.map_err(|e| {
            TrainError::BadInput(format!(
                "{origin}: data.name = \"{name}\" cannot be loaded: {e}. Fix: correct the [data] section (data.path, \
                 data.valid_fraction) for this data."
            ))
        })?;
        if data.train_len() == 0 {
            return Err(TrainError::BadInput(format!(
                "{origin}: data.name = \"{name}\" has no training samples. Fix: point data.path at data with samples, \
                 or lower data.valid_fraction."
            )));
        }
        Ok(data)
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
