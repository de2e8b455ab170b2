//! The corruptions a user chooses (`data.corruption`, docs/configuration.md): Gaussian blur, the
//! SENSEI spatial transformations, or a folder of the user's own labelled images. Every stage asks
//! each chosen corruption the same three things:
//!
//! - its test levels, the columns of `eval` ([`test_groups`]);
//! - its variants of T_val: T_val* for assessment and, with the clean images, T_val° for training
//!   and calibration ([`training_groups`]);
//! - the corrupted variant of a training image in T_train° ([`Draw`]).
//!
//! A folder's images are appended to the data set they are used with, so that every stage keeps
//! addressing images by their position in one [`Dataset`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::spatial::{SpatialParams, LEVELS};
use super::split::{stratified_split, ValSize};
use super::{folder, Corruption, Dataset, Images, Split};
use crate::config::SIGMAS;
use crate::error::{Error, Result};

/// Spatial variants of each validation image in T_val* (drawn from the full ranges).
pub const SPATIAL_VARIANTS: usize = 5;

/// One corruption the user chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptionKind {
    /// torchvision Gaussian blur: tests at `eval.sigmas`, training and validation at σ ∈ Σ.
    Blur,
    /// SENSEI's spatial transformations: tests at the five levels k/5, training and validation
    /// variants from the full ranges.
    Spatial,
    /// The user's labelled images: `<folder>[/train|/test]/[<level>/]<class>/*`.
    Folder(PathBuf),
}

/// How a corruption's columns are named in reports.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupNames {
    /// JSON key of the level map: `blur`, `spatial`, `folder:<name>`.
    pub key: String,
    /// Prefix of a level's column title: `blur` (blur0.5), `spat` (spat1/5), none for a folder.
    pub column_prefix: String,
    /// JSON key and column title of the robustness mean: `nrob`/`nRob`, `srob`/`sRob`, `frob:<name>`/`fRob:<name>`.
    pub rob_key: String,
    pub rob_title: String,
    /// Column title of the mean over the levels alone (without the clean set); none for blur,
    /// whose reports keep the paper's columns.
    pub levels_only_title: Option<String>,
}

impl CorruptionKind {
    /// The report's names of this corruption.
    pub fn names(&self) -> GroupNames {
        let names = |key: String, prefix: &str, rob_key: String, rob_title: String, levels_only: bool| GroupNames {
            key,
            column_prefix: prefix.into(),
            levels_only_title: levels_only.then(|| format!("{rob_title} (levels)")),
            rob_key,
            rob_title,
        };
        match self {
            CorruptionKind::Blur => names("blur".into(), "blur", "nrob".into(), "nRob".into(), false),
            CorruptionKind::Spatial => names("spatial".into(), "spat", "srob".into(), "sRob".into(), true),
            CorruptionKind::Folder(path) => {
                let name = folder_name(path);
                names(format!("folder:{name}"), "", format!("frob:{name}"), format!("fRob:{name}"), true)
            }
        }
    }
}

/// The last component of a folder's path (the path itself when it has none).
fn folder_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionKind::Blur => f.write_str("blur"),
            CorruptionKind::Spatial => f.write_str("spatial"),
            CorruptionKind::Folder(path) => write!(f, "folder={}", path.display()),
        }
    }
}

impl FromStr for CorruptionKind {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "blur" => Ok(CorruptionKind::Blur),
            "spatial" => Ok(CorruptionKind::Spatial),
            other => match other.strip_prefix("folder=") {
                Some(path) if !path.is_empty() => Ok(CorruptionKind::Folder(PathBuf::from(path))),
                _ => Err(format!("unknown corruption '{text}' (allowed: blur, spatial, folder=DIR)")),
            },
        }
    }
}

impl Serialize for CorruptionKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for CorruptionKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The chosen corruptions, in column order: one name or a list in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Corruptions(pub Vec<CorruptionKind>);

impl Default for Corruptions {
    fn default() -> Self {
        Corruptions(vec![CorruptionKind::Blur])
    }
}

impl<'de> Deserialize<'de> for Corruptions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let names = match Raw::deserialize(deserializer)? {
            Raw::One(name) => vec![name],
            Raw::Many(names) => names,
        };
        names.iter().map(|name| name.parse().map_err(serde::de::Error::custom)).collect::<std::result::Result<_, _>>().map(Corruptions)
    }
}

impl Corruptions {
    /// Whether this is blur alone, the default, whose artifacts carry no corruption tag.
    pub fn is_blur_only(&self) -> bool {
        self.0 == [CorruptionKind::Blur]
    }

    /// At least one corruption, each report name once.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.0.is_empty() {
            return Err("give at least one corruption (blur, spatial, folder=DIR)".into());
        }
        let keys: Vec<String> = self.0.iter().map(|k| k.names().key).collect();
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].contains(key) {
                return Err(format!("'{}' is given twice (as '{key}'); folders need distinct last names", self.0[i]));
            }
        }
        Ok(())
    }

    /// Relative folder paths made relative to `base` (the configuration file's folder).
    pub fn resolve(&mut self, base: &Path) {
        for kind in &mut self.0 {
            if let CorruptionKind::Folder(path) = kind {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }
}

/// One column: a name and its images, each with what is done to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// The level's key in reports: `0.5`, `1/5`, a folder level's name.
    pub key: String,
    /// (position in the data set, corruption) per image.
    pub items: Vec<(usize, Corruption)>,
}

/// One corruption's levels.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub kind: CorruptionKind,
    pub levels: Vec<Level>,
}

impl Group {
    /// Every image of every level, in order.
    pub fn items(&self) -> impl Iterator<Item = &(usize, Corruption)> {
        self.levels.iter().flat_map(|level| &level.items)
    }
}

/// The test levels of each corruption for the test images `indices` of `test`: blur at `sigmas`,
/// spatial at k/5 for k = 1..5 (each image's transform fixed by `seed` and its position), a folder's
/// `test/` part (or the whole folder) level by level, appended to `test`.
pub fn test_groups(kinds: &Corruptions, test: &mut Dataset, indices: &[usize], sigmas: &[f32], seed: u64) -> Result<Vec<Group>> {
    let mut groups = Vec::new();
    for kind in &kinds.0 {
        let levels = match kind {
            CorruptionKind::Blur => blur_group(indices, sigmas).levels,
            CorruptionKind::Spatial => LEVELS.map(|level| Level { key: format!("{level}/5"), items: indices.iter().map(|&i| (i, Corruption::Spatial { level, seed })).collect() }).collect(),
            CorruptionKind::Folder(path) => {
                let mut levels = Vec::new();
                for (key, images) in folder_levels(path, Split::Test, &test.classes)? {
                    let range = append(test, images)?;
                    levels.push(Level { key, items: range.map(|i| (i, Corruption::Clean)).collect() });
                }
                levels
            }
        };
        groups.push(Group { kind: kind.clone(), levels });
    }
    Ok(groups)
}

/// The images `indices` blurred at each σ of `sigmas`, one level per σ.
pub fn blur_group(indices: &[usize], sigmas: &[f32]) -> Group {
    let levels = sigmas.iter().map(|&s| Level { key: crate::report::sigma_key(s), items: indices.iter().map(|&i| (i, Corruption::Blur(s))).collect() }).collect();
    Group { kind: CorruptionKind::Blur, levels }
}

/// How a T_train° image is corrupted, per corruption.
#[derive(Debug, Clone, PartialEq)]
pub enum Draw {
    /// Blurred at a σ drawn from Σ.
    Blur,
    /// Transformed with parameters drawn from the full ranges.
    Spatial,
    /// Replaced by one of these images of the folder (positions in the training data set).
    Folder(Vec<usize>),
}

impl Draw {
    /// The corrupted variant of training image `image` (`h×w`), drawn with `rng`.
    pub fn variant(&self, image: usize, rng: &mut impl Rng, h: usize, w: usize) -> (usize, Corruption) {
        match self {
            Draw::Blur => (image, Corruption::Blur(SIGMAS[rng.gen_range(0..SIGMAS.len())])),
            Draw::Spatial => (image, Corruption::Transform(SpatialParams::sample_full(rng, h, w))),
            Draw::Folder(pool) => (pool[rng.gen_range(0..pool.len())], Corruption::Clean),
        }
    }
}

/// What the training stages use of the corruptions: the corrupted variants of T_val (T_val*; with
/// the clean images T_val°) per corruption, and how a T_train° image is corrupted.
#[derive(Debug, Clone)]
pub struct TrainingGroups {
    pub val: Vec<Group>,
    pub draws: Vec<Draw>,
}

/// The validation variants and training draws of each corruption for the training split `train`
/// (T_train) and `val` (T_val): blur at every σ of Σ; spatial as [`SPATIAL_VARIANTS`] variants from
/// the full ranges, fixed by `seed`; a folder's `train/` part (or the whole folder), appended to
/// `data` and split as the data is: its T_val share in T_val*, the rest drawn for T_train°.
pub fn training_groups(kinds: &Corruptions, data: &mut Dataset, train: &[usize], val: &[usize], seed: u64) -> Result<TrainingGroups> {
    let (h, w) = (data.images.height(), data.images.width());
    let (mut groups, mut draws) = (Vec::new(), Vec::new());
    for kind in &kinds.0 {
        let (levels, draw) = match kind {
            CorruptionKind::Blur => (blur_group(val, &SIGMAS).levels, Draw::Blur),
            CorruptionKind::Spatial => {
                let levels = (0..SPATIAL_VARIANTS)
                    .map(|variant| Level {
                        key: format!("variant {}", variant + 1),
                        items: val.iter().map(|&i| (i, Corruption::Transform(validation_variant(seed, variant, i, h, w)))).collect(),
                    })
                    .collect();
                (levels, Draw::Spatial)
            }
            CorruptionKind::Folder(path) => {
                let share = val.len() as f64 / (val.len() + train.len()).max(1) as f64;
                let (mut levels, mut pool) = (Vec::new(), Vec::new());
                for (key, images) in folder_levels(path, Split::Train, &data.classes)? {
                    if images.len() < 2 {
                        return Err(Error::data(&images.source, "a folder level needs at least 2 images: one for T_val*, one for T_train°"));
                    }
                    let wanted = ((share * images.len() as f64).round() as usize).clamp(1, images.len() - 1);
                    let (rest, held) = stratified_split(&images.labels, ValSize::Count(wanted), seed)?;
                    let range = append(data, images)?;
                    levels.push(Level { key, items: held.iter().map(|&j| (range.start + j, Corruption::Clean)).collect() });
                    pool.extend(rest.iter().map(|&j| range.start + j));
                }
                (levels, Draw::Folder(pool))
            }
        };
        groups.push(Group { kind: kind.clone(), levels });
        draws.push(draw);
    }
    Ok(TrainingGroups { val: groups, draws })
}

/// Spatial validation variant `variant` of image `index`: its own ChaCha8 stream, so it depends on
/// nothing but the seed, the variant and the image.
fn validation_variant(seed: u64, variant: usize, index: usize, h: usize, w: usize) -> SpatialParams {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5350_4154_4941_4c00);
    rng.set_stream(((variant as u64) << 40) | index as u64);
    SpatialParams::sample_full(&mut rng, h, w)
}

/// The fingerprint of T_val under `kinds`: `val_fingerprint` itself for blur alone (the artifacts
/// made before corruptions were a choice stay valid), else a hash of it, the corruptions and the
/// images appended to `data` beyond its first `base` images (a folder's).
pub fn tagged_fingerprint(val_fingerprint: String, kinds: &Corruptions, data: &Dataset, base: usize) -> String {
    if kinds.is_blur_only() {
        return val_fingerprint;
    }
    let mut hash = Sha256::new();
    hash.update(b"onnx-deeppatch corruptions v1\n");
    hash.update(val_fingerprint.as_bytes());
    for kind in &kinds.0 {
        hash.update(kind.names().key.as_bytes());
        hash.update(b"\n");
    }
    if data.len() > base {
        hash.update(data.subset(&(base..data.len()).collect::<Vec<_>>()).fingerprint().as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The levels of a folder corruption's `split` part: `<folder>/<split>/` when the folder has a
/// `train/` or `test/` part, else the folder itself; in it, either the data set's class folders
/// (one level, named after the folder; recognised by any folder named as a class) or one sub-folder
/// per level, each holding the class folders.
fn folder_levels(path: &Path, split: Split, classes: &[String]) -> Result<Vec<(String, Dataset)>> {
    if !path.is_dir() {
        return Err(Error::data(path, "no such corruption folder"));
    }
    let parted = ["train", "test"].iter().any(|part| path.join(part).is_dir());
    let dir = if parted { path.join(split.name()) } else { path.to_path_buf() };
    if !dir.is_dir() {
        return Err(Error::data(path, format!("the corruption folder has a train/ or test/ part but no {split}/ part")));
    }
    let names = |dirs: &[PathBuf]| -> Vec<String> { dirs.iter().map(|d| folder_name(d)).collect() };
    let entries = folder::class_folders(&dir)?;
    // A folder named like one of the classes means class folders here: one level.
    let level_dirs: Vec<(String, PathBuf)> = if names(&entries).iter().any(|n| classes.contains(n)) {
        vec![(folder_name(&dir), dir.clone())]
    } else {
        entries.iter().map(|d| (folder_name(d), d.clone())).collect()
    };
    if level_dirs.is_empty() {
        return Err(Error::data(&dir, "no level or class folders: a corruption folder holds [<level>/]<class>/ images"));
    }
    let mut levels = Vec::new();
    for (key, level_dir) in level_dirs {
        let class_dirs = folder::class_folders(&level_dir)?;
        let found = names(&class_dirs);
        if found != classes {
            let only = |a: &[String], b: &[String]| a.iter().filter(|n| !b.contains(n)).cloned().collect::<Vec<_>>().join(", ");
            return Err(Error::data(
                &level_dir,
                format!(
                    "the class folders differ from the data set's (only here: [{}]; only in the data set: [{}]); a corruption folder \
                     needs the data set's class folders, in its order",
                    only(&found, classes),
                    only(classes, &found)
                ),
            ));
        }
        levels.push((key, folder::load_classes(&level_dir, &class_dirs)?));
    }
    Ok(levels)
}

/// Appends `extra`'s images and labels to `data`; their positions there. Both must be 8-bit images
/// of one size with the same classes.
fn append(data: &mut Dataset, extra: Dataset) -> Result<Range<usize>> {
    let start = data.len();
    match (&mut data.images, extra.images) {
        (Images::U8Hwc { data: pixels, n, h, w, c }, Images::U8Hwc { data: more, n: added, h: eh, w: ew, c: ec }) => {
            if (*h, *w, *c) != (eh, ew, ec) {
                return Err(Error::data(&extra.source, format!("the images are {ew}×{eh}×{ec}, the data set's {w}×{h}×{c}: a corruption folder needs images of the data set's size")));
            }
            pixels.extend_from_slice(&more);
            *n += added;
        }
        _ => return Err(Error::data(&extra.source, "a corruption folder needs a data set of 8-bit images (not float NPY data)")),
    }
    data.labels.extend(extra.labels);
    Ok(start..data.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load_split, DataFormat};

    fn mini(split: Split) -> Dataset {
        load_split(&crate::test_support::fixture("cifar10-mini"), split, DataFormat::Folder).unwrap()
    }

    fn kinds(text: &str) -> Corruptions {
        serde_yaml::from_str(text).unwrap()
    }

    /// Writes `count` images of `data` (from its start) as PNG into `dir/<class>/`.
    fn write_images(data: &Dataset, dir: &Path, classes: &[String], count: usize) {
        for class in classes {
            std::fs::create_dir_all(dir.join(class)).unwrap();
        }
        for i in 0..count {
            let crate::data::ImageRef::U8Hwc(pixels) = data.images.image(i) else { panic!("8-bit images") };
            let image = image::RgbImage::from_raw(data.images.width() as u32, data.images.height() as u32, pixels.to_vec()).unwrap();
            image.save(dir.join(&classes[data.labels[i] as usize]).join(format!("{i:05}.png"))).unwrap();
        }
    }

    #[test]
    fn names_parse_and_lists_or_single_names_are_accepted() {
        assert_eq!(kinds("blur"), Corruptions::default());
        assert_eq!(kinds("[spatial, folder=field/x]").0, vec![CorruptionKind::Spatial, CorruptionKind::Folder("field/x".into())]);
        assert!(serde_yaml::from_str::<Corruptions>("fog").unwrap_err().to_string().contains("allowed: blur, spatial, folder=DIR"));
        assert!(kinds("[blur, blur]").validate().unwrap_err().contains("twice"));
        assert!(kinds("[folder=a/x, folder=b/x]").validate().is_err());
        assert!(Corruptions(Vec::new()).validate().is_err());
        assert_eq!(CorruptionKind::Folder("a/field".into()).names().rob_title, "fRob:field");
        assert_eq!(serde_yaml::to_string(&kinds("[spatial, blur]")).unwrap(), "- spatial\n- blur\n");
    }

    #[test]
    fn test_levels_of_blur_and_spatial() {
        let mut test = mini(Split::Test);
        let indices = [3, 1, 4];
        let groups = test_groups(&kinds("[blur, spatial]"), &mut test, &indices, &[0.5, 2.0], 9).unwrap();
        assert_eq!(groups[0].levels.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(), ["0.5", "2.0"]);
        assert_eq!(groups[0].levels[1].items[2], (4, Corruption::Blur(2.0)));
        let keys: Vec<&str> = groups[1].levels.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(keys, ["1/5", "2/5", "3/5", "4/5", "5/5"]);
        assert_eq!(groups[1].levels[4].items[0], (3, Corruption::Spatial { level: 5, seed: 9 }));
    }

    /// The spatial test sets are the same bytes for the same seed, and others for another seed.
    #[test]
    fn spatial_test_sets_are_fixed_by_the_seed() {
        let test = mini(Split::Test);
        let indices: Vec<usize> = (0..40).collect();
        let pre = crate::data::Preprocess::default();
        let bytes = |seed: u64| -> Vec<Vec<u8>> {
            let mut data = test.clone();
            let groups = test_groups(&kinds("spatial"), &mut data, &indices, &[], seed).unwrap();
            groups[0]
                .levels
                .iter()
                .map(|level| crate::data::make_mixed_batch(&data, &level.items, &pre).unwrap().iter().flat_map(|v| v.to_le_bytes()).collect())
                .collect()
        };
        let first = bytes(2022);
        assert_eq!(first, bytes(2022));
        assert_ne!(first, bytes(2023));
        assert!(first.windows(2).all(|pair| pair[0] != pair[1]), "every level differs");
    }

    #[test]
    fn validation_variants_and_draws_repeat_with_the_seed() {
        let mut data = mini(Split::Train);
        let (train, val): (Vec<usize>, Vec<usize>) = ((10..60).collect(), (0..10).collect());
        let groups = training_groups(&kinds("[spatial, blur]"), &mut data, &train, &val, 5).unwrap();
        assert_eq!(groups.val[0].levels.len(), SPATIAL_VARIANTS);
        assert_eq!(groups.val[1].levels.len(), SIGMAS.len());
        assert_eq!(groups.val[0].items().count(), SPATIAL_VARIANTS * val.len());
        let again = training_groups(&kinds("[spatial, blur]"), &mut mini(Split::Train), &train, &val, 5).unwrap();
        assert_eq!(groups.val, again.val);
        let other = training_groups(&kinds("spatial"), &mut mini(Split::Train), &train, &val, 6).unwrap();
        assert_ne!(groups.val[0], other.val[0]);
        assert_eq!(groups.draws, [Draw::Spatial, Draw::Blur]);
    }

    #[test]
    fn folders_give_levels_appended_to_the_data() {
        let root = tempfile::tempdir().unwrap();
        let test = mini(Split::Test);
        let classes = test.classes.clone();
        for level in ["heavy", "light"] {
            write_images(&test, &root.path().join("field/test").join(level), &classes, 12);
            write_images(&test, &root.path().join("field/train").join(level), &classes, 20);
        }
        let kinds = Corruptions(vec![CorruptionKind::Folder(root.path().join("field"))]);
        let mut data = test.clone();
        let groups = test_groups(&kinds, &mut data, &[0, 1], &[], 0).unwrap();
        assert_eq!(groups[0].levels.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(), ["heavy", "light"]);
        assert_eq!(data.len(), test.len() + 24);
        let (first, _) = groups[0].levels[1].items[0].clone();
        assert_eq!((first, data.labels[first]), (test.len() + 12, test.labels[0]));
        assert_eq!(data.images.image(first), test.images.image(0), "PNG is lossless");

        let mut train = mini(Split::Train);
        let before = train.len();
        let training = training_groups(&kinds, &mut train, &(0..98).collect::<Vec<_>>(), &(98..100).collect::<Vec<_>>(), 0).unwrap();
        assert_eq!(train.len(), before + 40);
        let Draw::Folder(pool) = &training.draws[0] else { panic!("a folder draw") };
        let held = training.val[0].items().count();
        assert_eq!(held + pool.len(), 40);
        assert!(held >= 2 && pool.iter().all(|&i| i >= before));
        assert_ne!(tagged_fingerprint("v".into(), &kinds, &train, before), tagged_fingerprint("v".into(), &Corruptions::default(), &train, before));
    }

    #[test]
    fn folders_with_other_classes_or_no_images_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let test = mini(Split::Test);
        let mut classes = test.classes.clone();
        classes[0] = "aeroplane".into();
        write_images(&test, &root.path().join("renamed"), &classes, 5);
        let refused = |dir: &str| {
            let mut data = test.clone();
            test_groups(&Corruptions(vec![CorruptionKind::Folder(root.path().join(dir))]), &mut data, &[0], &[], 0).unwrap_err().to_string()
        };
        let message = refused("renamed");
        assert!(message.contains("only here: [aeroplane]") && message.contains("only in the data set: [airplane]"), "{message}");
        for class in &test.classes {
            std::fs::create_dir_all(root.path().join("empty").join(class)).unwrap();
        }
        assert!(refused("empty").contains("no images found"), "{}", refused("empty"));
        assert!(refused("missing").contains("no such corruption folder"));
        std::fs::create_dir_all(root.path().join("parted/train")).unwrap();
        assert!(refused("parted").contains("no test/ part"));
    }
}
