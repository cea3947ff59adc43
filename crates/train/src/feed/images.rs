//! `image_folder` data served by burn-dataset's `ImageFolderDataset`: `oomph_data` lists,
//! checks and splits the folder; burn decodes each image when its batch is built; the
//! [`ImageBatcher`] stacks them into an [`ImageBatch`].

use super::{Batched, Data};
use crate::recovery::data_fault;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::transform::SelectionDataset;
use burn::data::dataset::Dataset;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn_dataset::vision::{Annotation, ImageDatasetItem, ImageFolderDataset, PixelDepth};
use oomph_data::{DataError, ImageSplits};
use std::path::Path;
use std::sync::Arc;

/// A batch of images: pixels `[n, channels, height, width]` scaled to `[0, 1]` (8-bit values
/// divided by 255, 16-bit ones by 65535, float ones as they are) and class indices `[n]`.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// Pixels, `[n, channels, height, width]`, in `[0, 1]`.
    pub images: Tensor<B, 4>,
    /// Class indices, `[n]`.
    pub targets: Tensor<B, 1, Int>,
}

/// Stacks burn-dataset's [`ImageDatasetItem`]s (one image-level label each, one size) into an
/// [`ImageBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageBatcher;

impl<B: Backend> Batcher<B, ImageDatasetItem, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<ImageDatasetItem>, device: &B::Device) -> ImageBatch<B> {
        let n = items.len();
        let (h, w) = items.first().map_or((0, 0), |i| (i.image_height, i.image_width));
        let c = items.first().map_or(0, |i| i.image.len() / (h * w).max(1));
        let mut pixels = Vec::with_capacity(n * c * h * w);
        let mut targets = Vec::with_capacity(n);
        for item in items {
            if (item.image_height, item.image_width, item.image.len()) != (h, w, h * w * c) {
                data_fault(format!(
                    "image `{}` differs in size or colour type from the other images of its batch (it changed since \
                     the folder was read). Fix: give every image one size and colour type; the data then changes, so \
                     train into a new --run-dir.",
                    item.image_path
                ));
            }
            pixels.extend(item.image.iter().map(|p| match *p {
                PixelDepth::U8(v) => f32::from(v) / 255.0,
                PixelDepth::U16(v) => f32::from(v) / 65535.0,
                PixelDepth::F32(v) => v,
            }));
            match item.annotation {
                Annotation::Label(class) => targets.push(class as i64),
                ref other => data_fault(format!(
                    "image `{}` has the annotation {other:?} where a class label was expected. Fix: serve one class \
                     label per image.",
                    item.image_path
                )),
            }
        }
        // Decoded images are interleaved `[height, width, channels]`.
        let hwc = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, h, w, c]), device);
        ImageBatch {
            images: hwc.permute([0, 3, 1, 2]),
            targets: Tensor::from_data(TensorData::new(targets, [n]), device),
        }
    }
}

/// burn-dataset's image folder, restricted to one split's images.
type Selection = SelectionDataset<ImageFolderDataset, ImageDatasetItem>;

/// One split of an image folder. burn-dataset decodes each image when its batch is built and
/// panics on one that does not decode (its header was read when the folder was listed, its
/// pixels were not): that stops the step as a data fault naming the file.
struct Images {
    selection: Selection,
    /// Every image of the folder, by its index in the folder.
    paths: Arc<Vec<std::path::PathBuf>>,
}

impl Dataset<ImageDatasetItem> for Images {
    fn get(&self, index: usize) -> Option<ImageDatasetItem> {
        crate::recovery::quietly(|| self.selection.get(index)).unwrap_or_else(|panic| {
            let path = self.selection.indices.get(index).and_then(|&i| self.paths.get(i));
            let path = path.map_or_else(|| format!("number {index} of its split"), |p| p.display().to_string());
            data_fault(format!(
                "image `{path}` cannot be decoded ({panic}). Fix: replace or remove the file; the data then changes, \
                 so train into a new --run-dir."
            ))
        })
    }

    fn len(&self) -> usize {
        self.selection.len()
    }
}

/// The image folder at `root`, split with `seed`, as training and validation feeds.
pub fn load<B: AutodiffBackend>(root: &Path, valid_fraction: f64, seed: u64) -> Result<Data<B>, DataError> {
    let ImageSplits { folder, train, valid, info, identity } = oomph_data::load_images(root, valid_fraction, seed)?;
    let items: Vec<(std::path::PathBuf, String)> =
        folder.images.iter().map(|(path, class)| (path.clone(), folder.classes[*class].clone())).collect();
    let dataset =
        ImageFolderDataset::new_classification_with_items(items, &folder.classes).map_err(|e| DataError::Images {
            path: root.to_path_buf(),
            problem: format!("cannot be listed ({e})"),
            fix: "check the folder's images".into(),
        })?;
    let dataset = Arc::new(dataset);
    let paths: Arc<Vec<_>> = Arc::new(folder.images.iter().map(|(path, _)| path.clone()).collect());
    let train = Images { selection: Selection::from_indices_checked(dataset.clone(), train), paths: paths.clone() };
    let valid = Images { selection: Selection::from_indices_checked(dataset, valid), paths };
    Ok(Data::new(info, identity, Batched::new(train, ImageBatcher), Batched::new(valid, ImageBatcher)))
}
