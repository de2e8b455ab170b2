//! Data sets, their splits and corruptions, and the batches fed to a backend.
//!
//! A data set is loaded whole into memory as 8-bit RGB pixels (or as floats already
//! preprocessed); corruptions and preprocessing happen per batch, in parallel, so the clean images
//! are held once whatever the number of blurred or transformed copies evaluated.

pub mod batches;
pub mod blur;
mod cifar;
pub mod corruption;
mod folder;
pub mod npy;
pub mod preprocess;
pub mod spatial;
pub mod split;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use batches::{Batch, BatchStream};
pub use corruption::{CorruptionKind, Corruptions};
pub use preprocess::{make_batch, make_mixed_batch, Corruption, Layout, Preprocess};

use crate::error::{Error, Result};

/// The pixels of all images of a data set, one layout for all.
#[derive(Debug, Clone, PartialEq)]
pub enum Images {
    /// Raw 8-bit pixels, `n×h×w×c`, channels interleaved (RGB for colour images).
    U8Hwc { data: Vec<u8>, n: usize, h: usize, w: usize, c: usize },
    /// Values already preprocessed for the model, `n×c×h×w`.
    F32Chw { data: Vec<f32>, n: usize, c: usize, h: usize, w: usize },
}

/// One image of [`Images`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ImageRef<'a> {
    /// `h×w×c` 8-bit values.
    U8Hwc(&'a [u8]),
    /// `c×h×w` preprocessed values.
    F32Chw(&'a [f32]),
}

impl Images {
    /// Number of images.
    pub fn len(&self) -> usize {
        match self {
            Images::U8Hwc { n, .. } | Images::F32Chw { n, .. } => *n,
        }
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn channels(&self) -> usize {
        match self {
            Images::U8Hwc { c, .. } | Images::F32Chw { c, .. } => *c,
        }
    }

    pub fn height(&self) -> usize {
        match self {
            Images::U8Hwc { h, .. } | Images::F32Chw { h, .. } => *h,
        }
    }

    pub fn width(&self) -> usize {
        match self {
            Images::U8Hwc { w, .. } | Images::F32Chw { w, .. } => *w,
        }
    }

    /// Values per image (`c·h·w`).
    pub fn image_len(&self) -> usize {
        self.channels() * self.height() * self.width()
    }

    /// Image `i`; panics when `i` is out of range, as slice indexing does.
    pub fn image(&self, i: usize) -> ImageRef<'_> {
        let len = self.image_len();
        match self {
            Images::U8Hwc { data, .. } => ImageRef::U8Hwc(&data[i * len..(i + 1) * len]),
            Images::F32Chw { data, .. } => ImageRef::F32Chw(&data[i * len..(i + 1) * len]),
        }
    }

    /// The images at `indices`, in that order.
    fn select(&self, indices: &[usize]) -> Images {
        let len = self.image_len();
        match self {
            Images::U8Hwc { data, h, w, c, .. } => Images::U8Hwc {
                data: indices.iter().flat_map(|&i| &data[i * len..(i + 1) * len]).copied().collect(),
                n: indices.len(),
                h: *h,
                w: *w,
                c: *c,
            },
            Images::F32Chw { data, c, h, w, .. } => Images::F32Chw {
                data: indices.iter().flat_map(|&i| &data[i * len..(i + 1) * len]).copied().collect(),
                n: indices.len(),
                c: *c,
                h: *h,
                w: *w,
            },
        }
    }
}

/// Images with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub images: Images,
    /// Class index per image.
    pub labels: Vec<i64>,
    /// Class names, by class index.
    pub classes: Vec<String>,
    /// Where the data was loaded from, for messages and reports.
    pub source: PathBuf,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `indices` with their labels, in that order; panics when an index is out of
    /// range, as slice indexing does.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        Dataset {
            images: self.images.select(indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
            source: self.source.clone(),
        }
    }

    /// SHA-256 (hex) over the layout, the shape, the pixels and the labels: recorded in a patched
    /// model's metadata to tell which data it was made with. Independent of the path and of the
    /// class names.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"onnx-deeppatch dataset v1\n");
        let (tag, dims): (&[u8], [usize; 4]) = match &self.images {
            Images::U8Hwc { n, h, w, c, .. } => (b"u8 nhwc", [*n, *h, *w, *c]),
            Images::F32Chw { n, c, h, w, .. } => (b"f32 nchw", [*n, *c, *h, *w]),
        };
        hash.update(tag);
        dims.iter().for_each(|d| hash.update((*d as u64).to_le_bytes()));
        match &self.images {
            Images::U8Hwc { data, .. } => hash.update(data),
            Images::F32Chw { data, .. } => {
                for chunk in data.chunks(16_384) {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                    hash.update(&bytes);
                }
            }
        }
        hash.update((self.labels.len() as u64).to_le_bytes());
        let labels: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        hash.update(&labels);
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How a data folder is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Whichever of the others the folder holds.
    #[default]
    Auto,
    /// `<split>/<class>/*.{jpg,jpeg,png}`.
    Folder,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary files.
    Cifar100,
    /// `<split>/x.npy` and `<split>/y.npy`.
    Npy,
}

impl DataFormat {
    const ALL: [DataFormat; 5] = [DataFormat::Auto, DataFormat::Folder, DataFormat::Cifar10, DataFormat::Cifar100, DataFormat::Npy];

    /// The name in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Auto => "auto",
            DataFormat::Folder => "folder",
            DataFormat::Cifar10 => "cifar10",
            DataFormat::Cifar100 => "cifar100",
            DataFormat::Npy => "npy",
        }
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<DataFormat, String> {
        let lower = s.to_ascii_lowercase();
        Self::ALL.into_iter().find(|f| f.name() == lower).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
            format!("unknown data format '{s}' (allowed: {})", names.join(", "))
        })
    }
}

/// Which part of a data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The sub-folder (and CIFAR file stem) of the split.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Loads one split of the data under `root`; `DataFormat::Auto` looks for image folders, then
/// CIFAR-10, CIFAR-100 and NPY files, in that order.
pub fn load_split(root: &Path, split: Split, format: DataFormat) -> Result<Dataset> {
    if !root.is_dir() {
        return Err(Error::data(root, "no such data folder"));
    }
    match format {
        // detect never answers Auto, so this recurses once.
        DataFormat::Auto => load_split(root, split, detect(root, split)?),
        DataFormat::Folder => folder::load(root, split),
        DataFormat::Cifar10 => cifar::load(root, split, cifar::Kind::Cifar10),
        DataFormat::Cifar100 => cifar::load(root, split, cifar::Kind::Cifar100),
        DataFormat::Npy => load_npy_pair(root, split),
    }
}

/// The format whose files are present for `split`.
fn detect(root: &Path, split: Split) -> Result<DataFormat> {
    let split_dir = root.join(split.name());
    if folder::has_class_folders(&split_dir) {
        Ok(DataFormat::Folder)
    } else if cifar::find(root, split, cifar::Kind::Cifar10).is_some() {
        Ok(DataFormat::Cifar10)
    } else if cifar::find(root, split, cifar::Kind::Cifar100).is_some() {
        Ok(DataFormat::Cifar100)
    } else if split_dir.join("x.npy").is_file() {
        Ok(DataFormat::Npy)
    } else {
        Err(Error::data(
            root,
            format!(
                "no {split} data found: expected image folders {split}/<class>/, CIFAR-10 or CIFAR-100 binary files, \
                 or {split}/x.npy with {split}/y.npy"
            ),
        ))
    }
}

/// `<split>/x.npy` (uint8 N×H×W×C or float32 N×C×H×W) with `<split>/y.npy` (int64 or int32 [N]).
fn load_npy_pair(root: &Path, split: Split) -> Result<Dataset> {
    use npy::NpyData;
    let dir = root.join(split.name());
    let (x_path, y_path) = (dir.join("x.npy"), dir.join("y.npy"));
    let x = npy::read_npy(&x_path)?;
    let images = match (x.data, x.shape.as_slice()) {
        (NpyData::U8(data), &[n, h, w, c]) => Images::U8Hwc { data, n, h, w, c },
        (NpyData::F32(data), &[n, c, h, w]) => Images::F32Chw { data, n, c, h, w },
        (data, shape) => {
            return Err(Error::data(
                &x_path,
                format!("expected uint8 N×H×W×C or float32 N×C×H×W images, found {} of shape {shape:?}", data.descr()),
            ))
        }
    };
    let y = npy::read_npy(&y_path)?;
    let labels: Vec<i64> = match y.data {
        NpyData::I64(v) if y.shape.len() == 1 => v,
        NpyData::I32(v) if y.shape.len() == 1 => v.into_iter().map(i64::from).collect(),
        data => return Err(Error::data(&y_path, format!("expected int64 or int32 labels [N], found {} of shape {:?}", data.descr(), y.shape))),
    };
    if labels.len() != images.len() {
        return Err(Error::data(&y_path, format!("{} labels for {} images in x.npy", labels.len(), images.len())));
    }
    if images.is_empty() {
        return Err(Error::data(&x_path, "no images"));
    }
    if let Some(bad) = labels.iter().find(|&&l| l < 0) {
        return Err(Error::data(&y_path, format!("negative label {bad}")));
    }
    let count = labels.iter().max().map_or(0, |m| *m + 1);
    Ok(Dataset { images, labels, classes: (0..count).map(|c| c.to_string()).collect(), source: dir })
}

#[cfg(test)]
mod tests {
    use super::*;
    use npy::{NpyArray, NpyData};

    fn tiny() -> Dataset {
        Dataset {
            images: Images::U8Hwc { data: (0..4 * 2 * 2 * 3).map(|v| v as u8).collect(), n: 4, h: 2, w: 2, c: 3 },
            labels: vec![3, 1, 4, 1],
            classes: (0..5).map(|c| c.to_string()).collect(),
            source: PathBuf::from("memory"),
        }
    }

    #[test]
    fn subsets_keep_images_with_their_labels() {
        let data = tiny();
        let part = data.subset(&[2, 0]);
        assert_eq!(part.labels, vec![4, 3]);
        assert_eq!(part.images.image(0), data.images.image(2));
        assert_eq!(part.images.image(1), ImageRef::U8Hwc(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]));
        assert_eq!((part.len(), part.images.len(), part.images.image_len()), (2, 2, 12));
    }

    #[test]
    fn fingerprints_see_pixels_labels_and_shape() {
        let data = tiny();
        let print = data.fingerprint();
        assert_eq!(print.len(), 64);
        assert_eq!(print, tiny().fingerprint());
        let mut relabelled = tiny();
        relabelled.labels[0] = 0;
        assert_ne!(relabelled.fingerprint(), print);
        let mut repixelled = tiny();
        if let Images::U8Hwc { data, .. } = &mut repixelled.images {
            data[5] ^= 1;
        }
        assert_ne!(repixelled.fingerprint(), print);
        let mut reshaped = tiny();
        if let Images::U8Hwc { h, w, .. } = &mut reshaped.images {
            (*h, *w) = (1, 4);
        }
        assert_ne!(reshaped.fingerprint(), print);
        let renamed = Dataset { source: PathBuf::from("elsewhere"), ..tiny() };
        assert_eq!(renamed.fingerprint(), print);
    }

    #[test]
    fn formats_parse_and_name_the_allowed_values() {
        assert_eq!("CIFAR10".parse::<DataFormat>(), Ok(DataFormat::Cifar10));
        assert_eq!(DataFormat::Npy.to_string(), "npy");
        let error = "tfrecord".parse::<DataFormat>().unwrap_err();
        assert_eq!(error, "unknown data format 'tfrecord' (allowed: auto, folder, cifar10, cifar100, npy)");
        let parsed: DataFormat = serde_json::from_str("\"cifar100\"").unwrap();
        assert_eq!(parsed, DataFormat::Cifar100);
    }

    #[test]
    fn loads_npy_pairs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("test");
        std::fs::create_dir(&dir).unwrap();
        let pixels: Vec<u8> = (0..2 * 3 * 4 * 3).map(|v| v as u8).collect();
        npy::write_npy(&dir.join("x.npy"), &NpyArray::new(vec![2, 3, 4, 3], NpyData::U8(pixels.clone())).unwrap()).unwrap();
        npy::write_npy(&dir.join("y.npy"), &NpyArray::new(vec![2], NpyData::I32(vec![2, 0])).unwrap()).unwrap();
        let data = load_split(root.path(), Split::Test, DataFormat::Auto).unwrap();
        assert_eq!(data.images, Images::U8Hwc { data: pixels, n: 2, h: 3, w: 4, c: 3 });
        assert_eq!((data.labels, data.classes), (vec![2, 0], vec!["0".to_string(), "1".into(), "2".into()]));

        npy::write_npy(&dir.join("x.npy"), &NpyArray::new(vec![2, 1, 2, 2], NpyData::F32(vec![0.5; 8])).unwrap()).unwrap();
        let floats = load_split(root.path(), Split::Test, DataFormat::Npy).unwrap();
        assert_eq!((floats.images.channels(), floats.images.height()), (1, 2));

        npy::write_npy(&dir.join("y.npy"), &NpyArray::new(vec![3], NpyData::I64(vec![0, 1, 2])).unwrap()).unwrap();
        let message = load_split(root.path(), Split::Test, DataFormat::Npy).unwrap_err().to_string();
        assert!(message.contains("y.npy") && message.contains("3 labels for 2 images"), "{message}");
    }

    #[test]
    fn unknown_folders_say_what_was_expected() {
        let root = tempfile::tempdir().unwrap();
        let message = load_split(root.path(), Split::Train, DataFormat::Auto).unwrap_err().to_string();
        assert!(message.contains("no train data found") && message.contains("train/x.npy"), "{message}");
        let missing = load_split(&root.path().join("nowhere"), Split::Train, DataFormat::Auto).unwrap_err();
        assert!(missing.to_string().contains("nowhere"));
    }
}
