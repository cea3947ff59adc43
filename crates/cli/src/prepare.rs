//! A recipe made ready once per process: the model keys parsed (defaults filled into the
//! recipe), the data loaded for the model, and the model built for the data.

use oomph_data::Splits;
use oomph_recipe::Recipe;
use oomph_train::error::TrainError;
use oomph_train::{Built, Models, Prepared, Registry};
use std::path::Path;

/// Loads a recipe file with its `--set` overrides.
pub fn recipe(path: &Path, set: &[String]) -> Result<Recipe, TrainError> {
    oomph_recipe::load(path, set).map_err(|e| TrainError::BadInput(e.to_string()))
}

/// Parses the `[model]` keys for backend `B` (the built-in kinds and `M`'s) and fills the
/// model's defaults into `recipe`. Model keys do not depend on the backend: a process that
/// does not train (the supervisor, `oomph check`) asks the CPU backend's registry.
pub fn model<B, M>(recipe: &mut Recipe, origin: &str) -> Result<Box<dyn Prepared<B>>, TrainError>
where
    B: burn::tensor::backend::AutodiffBackend,
    M: Models,
{
    let mut reg = Registry::<B>::new();
    oomph_models::Builtin::register(&mut reg);
    M::register(&mut reg);
    let prepared = reg
        .prepare(&recipe.model.kind, &recipe.model.params, origin)
        .map_err(|e| TrainError::BadInput(e.to_string()))?;
    recipe.model.params = prepared.resolved_params();
    Ok(prepared)
}

/// Loads the data for a prepared model, checks that the effective batch fits it, and builds
/// the model for it on `device`: everything `oomph train` rejects before a run starts.
pub fn build<B>(
    prepared: Box<dyn Prepared<B>>,
    recipe: &Recipe,
    origin: &str,
    device: &B::Device,
) -> Result<(Box<dyn Built<B>>, Splits), TrainError>
where
    B: burn::tensor::backend::AutodiffBackend,
{
    let data = oomph_data::load(&recipe.data, recipe.run.seed, prepared.needs().seq_len)
        .map_err(|e| TrainError::BadInput(format!("{origin}: {e}")))?;
    oomph_train::trainer::check_data_fits(recipe, origin, &data)?;
    let built = prepared.build(recipe, origin, &data, device)?;
    Ok((built, data))
}
