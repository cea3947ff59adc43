//! A recipe made ready once per process: the model keys parsed (defaults filled into the
//! recipe), the data loaded for the model, and the model built for the data.

use oomph_recipe::Recipe;
use oomph_train::error::TrainError;
use oomph_train::{Built, Data, Models, Prepared, Registry};
use std::path::Path;

/// Loads a recipe file with its `--set` overrides.
pub fn recipe(path: &Path, set: &[String]) -> Result<Recipe, TrainError> {
    oomph_recipe::load(path, set).map_err(|e| TrainError::BadInput(e.to_string()))
}

/// A model kind with its keys parsed, and the registry that knows the program's data.
pub struct Ready<B: burn::tensor::backend::AutodiffBackend> {
    registry: Registry<B>,
    model: Box<dyn Prepared<B>>,
}

/// A model built for its loaded data.
pub struct Loaded<B: burn::tensor::backend::AutodiffBackend> {
    /// The model, ready to train.
    pub model: Box<dyn Built<B>>,
    /// The data.
    pub data: Data<B>,
}

/// Parses the `[model]` keys for backend `B` (the built-in kinds and `M`'s), fills the
/// model's defaults into `recipe`, and checks that program data the recipe names is
/// registered. Model keys do not depend on the backend: a process that does not train (the
/// supervisor, `oomph check`) asks the CPU backend's registry.
pub fn model<B, M>(recipe: &mut Recipe, origin: &str) -> Result<Ready<B>, TrainError>
where
    B: burn::tensor::backend::AutodiffBackend,
    M: Models,
{
    let mut registry = Registry::<B>::new();
    oomph_models::Builtin::register(&mut registry);
    M::register(&mut registry);
    let model = registry
        .prepare(&recipe.model.kind, &recipe.model.params, origin)
        .map_err(|e| TrainError::BadInput(e.to_string()))?;
    recipe.model.params = model.resolved_params();
    registry.check_data(recipe, origin)?;
    Ok(Ready { registry, model })
}

/// Loads the data for a prepared model, checks that the effective batch fits it, and builds
/// the model for it on `device` (a model that cannot take the data's batches is refused
/// here): everything `oomph train` rejects before a run starts.
pub fn build<B>(ready: Ready<B>, recipe: &Recipe, origin: &str, device: &B::Device) -> Result<Loaded<B>, TrainError>
where
    B: burn::tensor::backend::AutodiffBackend,
{
    let data = ready.registry.load_data(recipe, origin, ready.model.needs())?;
    oomph_train::trainer::check_data_fits(recipe, origin, &data)?;
    let model = ready.model.build(recipe, origin, &data, device)?;
    Ok(Loaded { model, data })
}
