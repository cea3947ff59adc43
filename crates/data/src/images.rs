//! `image_folder` data: a folder with one sub-folder of images per class.
//!
//! [`scan`] lists the images (PNG, JPEG, BMP) of every class sub-folder in path order, the
//! classes sorted by name (byte order: `10` before `2`), and reads each image's header with
//! the decoder its extension names: every image must have the same width, height and number
//! of channels, so a file that is not what its name says, or of another size, is named before
//! training starts. [`load_images`] splits the list with the run seed, as tables are split
//! (not stratified by class), and hashes every image's bytes for the identity. Decoding the
//! pixels is left to the dataset that serves them (burn-dataset's `ImageFolderDataset`, in
//! `oomph_train::feed`), which names a file whose pixels turn out not to decode.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::{split_indices, valid_count, DataIdentity, DataInfo};

/// The file extensions read, as burn-dataset's `ImageFolderDataset` spells them.
pub const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// The images of an image folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// The folder.
    pub root: PathBuf,
    /// Class names (the sub-folders' names), sorted; class `c` is `classes[c]`.
    pub classes: Vec<String>,
    /// Every image with its class index, in path order.
    pub images: Vec<(PathBuf, usize)>,
    /// `[channels, height, width]` of every image.
    pub shape: [usize; 3],
}

/// An image folder split into training and validation images.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSplits {
    /// Every image of the folder.
    pub folder: ImageFolder,
    /// Indices into `folder.images` of the training images, in path order.
    pub train: Vec<usize>,
    /// Indices of the validation images, in path order.
    pub valid: Vec<usize>,
    /// Sizes and description.
    pub info: DataInfo,
    /// The folder's identity: class names, split sizes, and a SHA-256 of every image's relative
    /// path, class and bytes.
    pub identity: DataIdentity,
}

fn bad(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> DataError {
    DataError::Images { path: path.to_path_buf(), problem: problem.into(), fix: fix.into() }
}

/// The entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let read = std::fs::read_dir(dir).map_err(|e| DataError::Io { path: dir.to_path_buf(), error: e })?;
    let mut out = Vec::new();
    for entry in read {
        out.push(entry.map_err(|e| DataError::Io { path: dir.to_path_buf(), error: e })?.path());
    }
    out.sort();
    Ok(out)
}

/// The image extension of `path`, if it has one (any case).
fn image_extension(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?;
    EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()).then(|| ext.to_string())
}

/// `[channels, height, width]` from an image's header.
fn header_shape(path: &Path) -> Result<[usize; 3], String> {
    // The format its extension names, as burn-dataset's loader (`image::open`) picks it.
    let reader = image::ImageReader::open(path).map_err(|e| e.to_string())?;
    let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let channels = image::ImageDecoder::color_type(&decoder).channel_count();
    Ok([usize::from(channels), h as usize, w as usize])
}

/// Lists the images of the folder `root`: one sub-folder per class, images inside it (files
/// that are not images are skipped; hidden entries too). Every image's header is read.
pub fn scan(root: &Path) -> Result<ImageFolder, DataError> {
    let mut classes = Vec::new();
    let mut images = Vec::new();
    for dir in sorted_entries(root)? {
        let raw = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if raw.starts_with('.') {
            continue;
        }
        if !dir.is_dir() {
            if image_extension(&dir).is_some() {
                return Err(bad(
                    &dir,
                    "is an image directly in the image folder, where only class sub-folders belong",
                    "move each image into the sub-folder named after its class",
                ));
            }
            continue;
        }
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            return Err(bad(&dir, "has a name that is not UTF-8, and class names are text", "rename the folder"));
        };
        let class = classes.len();
        let before = images.len();
        for file in sorted_entries(&dir)? {
            let hidden = file.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            let Some(ext) = image_extension(&file).filter(|_| !hidden && file.is_file()) else { continue };
            if ext != ext.to_ascii_lowercase() {
                return Err(bad(
                    &file,
                    format!("has the extension `.{ext}`; images are read with lower-case extensions only"),
                    format!("rename it to `.{}`", ext.to_ascii_lowercase()),
                ));
            }
            images.push((file, class));
        }
        if images.len() == before {
            let nested = sorted_entries(&dir)?.into_iter().any(|sub| {
                sub.is_dir()
                    && sorted_entries(&sub).is_ok_and(|files| files.iter().any(|f| image_extension(f).is_some()))
            });
            return Err(if nested {
                bad(
                    &dir,
                    "holds folders of images, not images: the image folder is one level of class folders",
                    format!(
                        "if `{}` is one split of the dataset (e.g. train/ and val/), point data.path at it",
                        dir.display()
                    ),
                )
            } else {
                bad(
                    &dir,
                    "is a class folder without images",
                    format!("add {} images to it, or remove it", EXTENSIONS.join("/")),
                )
            });
        }
        classes.push(name);
    }
    if images.is_empty() {
        return Err(bad(
            root,
            "holds no class sub-folders with images",
            format!(
                "point data.path at a folder with one sub-folder per class, each holding {} images",
                EXTENSIONS.join("/")
            ),
        ));
    }
    let mut shape = None;
    for (file, _) in &images {
        let s = header_shape(file)
            .map_err(|e| bad(file, format!("cannot be read as an image ({e})"), "replace or remove the file"))?;
        match shape {
            None => shape = Some((s, file.clone())),
            Some((first, ref at)) if first != s => {
                return Err(bad(
                    file,
                    format!(
                        "is {}x{} with {} channel(s), but `{}` is {}x{} with {} channel(s): the images of a folder \
                         must share one size and one colour type to be batched",
                        s[2],
                        s[1],
                        s[0],
                        at.display(),
                        first[2],
                        first[1],
                        first[0]
                    ),
                    "resize or convert the images to one size and colour type",
                ))
            }
            Some(_) => {}
        }
    }
    let shape = shape.map(|(s, _)| s).expect("at least one image");
    if classes.len() < 2 {
        return Err(bad(
            root,
            format!("holds a single class folder (`{}`): classification needs two classes or more", classes[0]),
            "add a folder of images for every other class",
        ));
    }
    Ok(ImageFolder { root: root.to_path_buf(), classes, images, shape })
}

/// SHA-256 of the folder: each image's path relative to the folder, its class and its bytes
/// (every image is read once).
fn content_sha256(folder: &ImageFolder) -> Result<String, DataError> {
    let mut hasher = Sha256::new();
    hasher.update(b"oomph-data image folder v2\0");
    for (file, class) in &folder.images {
        let bytes = std::fs::read(file).map_err(|e| DataError::Io { path: file.clone(), error: e })?;
        let rel = file.strip_prefix(&folder.root).unwrap_or(file);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update((*class as u64).to_le_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Scans the image folder `root` and splits it: `round(images * valid_fraction)` validation
/// images drawn with the run seed, the rest for training.
pub fn load_images(root: &Path, valid_fraction: f64, seed: u64) -> Result<ImageSplits, DataError> {
    if !(0.0..1.0).contains(&valid_fraction) {
        return Err(DataError::BadValidFraction { value: valid_fraction });
    }
    let folder = scan(root)?;
    let total = folder.images.len();
    let n_valid = valid_count(total, valid_fraction);
    let n_train = total - n_valid;
    if n_train == 0 || (valid_fraction > 0.0 && n_valid == 0) {
        return Err(DataError::SplitTooSmall {
            dataset: format!("image folder `{}`", root.display()),
            unit: "images",
            total,
            valid_fraction,
            train: n_train,
            valid: n_valid,
            need: "each split needs at least 1 image (validation may be empty only when data.valid_fraction = 0)"
                .into(),
            fix: "add images, or pick a data.valid_fraction that leaves images on both sides (or 0 to train \
                  without validation)."
                .into(),
        });
    }
    let (train, valid) = split_indices(total, n_valid, seed);
    let [c, h, w] = folder.shape;
    let k = folder.classes.len();
    let description = format!(
        "image folder `{}`: {total} images of {w}x{h} with {c} channel(s), {k} classes; train {n_train} / valid \
         {n_valid} images (valid_fraction {valid_fraction}, split seed {seed})",
        root.display()
    );
    let info = DataInfo {
        kind: "image_folder".into(),
        task: "classification".into(),
        n_features: None,
        n_classes: Some(k),
        class_names: Some(folder.classes.clone()),
        vocab_size: None,
        image: Some(folder.shape),
        seq_len: None,
        train_len: n_train,
        valid_len: n_valid,
        description,
    };
    let identity = DataIdentity::new(&info, None, content_sha256(&folder)?);
    tracing::info!(train = n_train, valid = n_valid, "data: {}", info.description);
    Ok(ImageSplits { folder, train, valid, info, identity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32, value: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(w, h, image::Luma([value])).save(path).unwrap();
    }

    #[test]
    fn classes_are_sorted_sub_folders_and_images_come_in_path_order() {
        let d = tempfile::tempdir().unwrap();
        for (class, n) in [("b", 3), ("a", 2)] {
            for i in 0..n {
                png(&d.path().join(class).join(format!("{i}.png")), 4, 3, i as u8);
            }
        }
        std::fs::write(d.path().join("a").join("notes.txt"), "not an image").unwrap();
        let f = scan(d.path()).unwrap();
        assert_eq!(f.classes, ["a", "b"]);
        assert_eq!(f.images.len(), 5);
        assert_eq!(f.images[0], (d.path().join("a").join("0.png"), 0));
        assert_eq!(f.images[4], (d.path().join("b").join("2.png"), 1));
        assert_eq!(f.shape, [1, 3, 4]);
        let s = load_images(d.path(), 0.4, 3).unwrap();
        assert_eq!((s.train.len(), s.valid.len()), (3, 2));
        assert_eq!(s, load_images(d.path(), 0.4, 3).unwrap(), "the split is fixed by the seed");
        assert_eq!(s.info.image, Some([1, 3, 4]));
    }

    #[test]
    fn bad_folders_are_named_with_a_fix() {
        let d = tempfile::tempdir().unwrap();
        png(&d.path().join("a").join("0.png"), 4, 4, 0);
        png(&d.path().join("b").join("0.png"), 5, 4, 0);
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("b/0.png") && e.contains("5x4") && e.contains("Fix:"), "{e}");

        std::fs::write(d.path().join("b").join("0.png"), b"not a png").unwrap();
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("b/0.png") && e.contains("cannot be read as an image"), "{e}");

        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("a")).unwrap();
        let e = scan(empty.path()).unwrap_err().to_string();
        assert!(e.contains("class folder without images"), "{e}");

        let upper = tempfile::tempdir().unwrap();
        png(&upper.path().join("a").join("0.png"), 4, 4, 0);
        std::fs::rename(upper.path().join("a").join("0.png"), upper.path().join("a").join("0.PNG")).unwrap();
        let e = scan(upper.path()).unwrap_err().to_string();
        assert!(e.contains("0.PNG") && e.contains("rename it to `.png`"), "{e}");
    }

    /// A file that is not what its extension names is found by the header check (burn's
    /// loader picks the decoder by extension and would fail in the middle of training).
    #[test]
    fn a_file_whose_content_is_not_its_extension_is_named() {
        let d = tempfile::tempdir().unwrap();
        png(&d.path().join("a").join("0.png"), 4, 4, 0);
        png(&d.path().join("b").join("0.png"), 4, 4, 0);
        std::fs::rename(d.path().join("b").join("0.png"), d.path().join("b").join("0.jpg")).unwrap();
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("b/0.jpg") && e.contains("cannot be read as an image"), "{e}");
    }

    #[test]
    fn one_class_and_split_folders_are_refused_with_their_fix() {
        let one = tempfile::tempdir().unwrap();
        png(&one.path().join("a").join("0.png"), 4, 4, 0);
        let e = scan(one.path()).unwrap_err().to_string();
        assert!(e.contains("single class folder (`a`)"), "{e}");
        let split = tempfile::tempdir().unwrap();
        for part in ["train", "val"] {
            for class in ["a", "b"] {
                png(&split.path().join(part).join(class).join("0.png"), 4, 4, 0);
            }
        }
        let e = scan(split.path()).unwrap_err().to_string();
        assert!(e.contains("holds folders of images") && e.contains("point data.path at it"), "{e}");
    }

    /// Two images of one size swapped between classes change the identity.
    #[test]
    fn the_identity_covers_the_images_bytes() {
        let d = tempfile::tempdir().unwrap();
        png(&d.path().join("a").join("0.png"), 4, 4, 10);
        png(&d.path().join("b").join("0.png"), 4, 4, 200);
        let before = load_images(d.path(), 0.0, 1).unwrap().identity;
        png(&d.path().join("a").join("0.png"), 4, 4, 200);
        png(&d.path().join("b").join("0.png"), 4, 4, 10);
        let after = load_images(d.path(), 0.0, 1).unwrap().identity;
        assert_ne!(before.content_sha256, after.content_sha256);
    }
}
