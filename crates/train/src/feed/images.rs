//! `image_folder` data served by burn-dataset's `ImageFolderDataset`: `oomph_data` lists,
//! checks and splits the folder; burn decodes each image when its batch is built; the
//! [`ImageBatcher`] stacks them into an [`ImageBatch`].

use super::{Batched, Data};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::transform::SelectionDataset;
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
            assert_eq!(
                (item.image_height, item.image_width, item.image.len()),
                (h, w, h * w * c),
                "`{}` differs in size or colour type from the batch's first image",
                item.image_path
            );
            pixels.extend(item.image.iter().map(|p| match *p {
                PixelDepth::U8(v) => f32::from(v) / 255.0,
                PixelDepth::U16(v) => f32::from(v) / 65535.0,
                PixelDepth::F32(v) => v,
            }));
            match item.annotation {
                Annotation::Label(class) => targets.push(class as i64),
                ref other => panic!("`{}`: an image-level label was expected, not {other:?}", item.image_path),
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

/// One split of an image folder: burn-dataset's dataset, restricted to the split's images.
type Images = SelectionDataset<ImageFolderDataset, ImageDatasetItem>;

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
    let train = Images::from_indices_checked(dataset.clone(), train);
    let valid = Images::from_indices_checked(dataset, valid);
    Ok(Data::new(info, identity, Batched::new(train, ImageBatcher), Batched::new(valid, ImageBatcher)))
}
