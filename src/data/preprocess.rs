//! From data set images to the model's input tensor: corruption (blur, spatial) on the 8-bit
//! image, then scale and per-channel normalisation into the model's layout.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::blur::GaussianKernel;
use super::spatial::SpatialParams;
use super::{Dataset, Images};
use crate::error::{Error, Result};

/// Memory order of the model's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// [batch, channels, height, width], PyTorch's order.
    #[default]
    Nchw,
    /// [batch, height, width, channels], TensorFlow's order.
    Nhwc,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        })
    }
}

impl FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Layout, String> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(format!("unknown layout '{s}' (allowed: nchw, nhwc)")),
        }
    }
}

/// How an 8-bit value `v` of channel `c` becomes a model input: `(v·scale − mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Layout,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess { scale: 1.0 / 255.0, mean: vec![0.0; 3], std: vec![1.0; 3], layout: Layout::Nchw }
    }
}

impl Preprocess {
    /// Checks the parameters against `channels`.
    fn validate(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::Config(format!(
                "preprocess: {} mean and {} std values for images of {channels} channels",
                self.mean.len(),
                self.std.len()
            )));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::Config("preprocess: scale and std must be positive numbers".into()));
        }
        Ok(())
    }

    /// The normalised value of every 8-bit level, per channel (`table[c·256 + v]`), computed as
    /// torchvision's `ToTensor` and `Normalize` do, for bit-identical inputs: when the scale is
    /// the float32 reciprocal of a whole number d (1/255 is), the value is divided by d, since
    /// `v · (1/255)` and `v / 255` differ in the last bit for half of the levels; then
    /// `(x − mean) / std`.
    fn table(&self) -> Vec<f32> {
        let whole = (1.0 / f64::from(self.scale)).round();
        let divisor = ((1.0..1e9).contains(&whole) && 1.0 / whole as f32 == self.scale).then_some(whole as f32);
        let scale = self.scale;
        let to_unit = move |v: f32| divisor.map_or(v * scale, |d| v / d);
        self.mean
            .iter()
            .zip(&self.std)
            .flat_map(|(mean, std)| (0..=255u8).map(move |v| (to_unit(f32::from(v)) - mean) / std))
            .collect()
    }
}

/// What is done to an image before it is preprocessed.
#[derive(Debug, Clone, PartialEq)]
pub enum Corruption {
    Clean,
    /// torchvision Gaussian blur of this σ.
    Blur(f32),
    /// SENSEI spatial transform of test level 1..=5; each image's parameters are drawn from
    /// `seed` and the image's index in the data set, never from its place in a batch.
    Spatial { level: u8, seed: u64 },
    /// SENSEI spatial transform with these parameters (a training or validation variant).
    Transform(SpatialParams),
}

impl fmt::Display for Corruption {
    /// Stable names for reports and files: `clean`, `blur1.5`, `blur2.0`, `spatial3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::Clean => f.write_str("clean"),
            Corruption::Blur(sigma) if sigma.fract() == 0.0 => write!(f, "blur{sigma:.1}"),
            Corruption::Blur(sigma) => write!(f, "blur{sigma}"),
            Corruption::Spatial { level, .. } => write!(f, "spatial{level}"),
            Corruption::Transform(_) => f.write_str("spatial"),
        }
    }
}

/// A corruption with its per-batch work done (the blur kernel built once).
enum Prepared {
    Clean,
    Blur(GaussianKernel),
    Spatial { level: u8, seed: u64 },
    Transform(SpatialParams),
}

impl Prepared {
    fn new(corruption: &Corruption) -> Result<Prepared> {
        Ok(match corruption {
            Corruption::Clean => Prepared::Clean,
            Corruption::Blur(sigma) => Prepared::Blur(GaussianKernel::new(*sigma)?),
            Corruption::Spatial { level, seed } => {
                if !super::spatial::LEVELS.contains(level) {
                    return Err(Error::Config(format!("spatial level {level} is not in 1..=5")));
                }
                Prepared::Spatial { level: *level, seed: *seed }
            }
            Corruption::Transform(params) => Prepared::Transform(*params),
        })
    }

    /// The spatial parameters of data set image `index`: a ChaCha8 stream per image, so they do
    /// not depend on which other images share the batch.
    fn spatial(level: u8, seed: u64, index: usize, h: usize, w: usize) -> Result<SpatialParams> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        SpatialParams::sample_level(level, &mut rng, h, w)
    }
}

/// The model input for images `indices` of `ds` under `corruption`: `[N, C, H, W]` or
/// `[N, H, W, C]` as `pre.layout` says, images prepared in parallel.
///
/// 8-bit images are corrupted, then scaled and normalised. Float images (`Images::F32Chw`) are
/// taken as already preprocessed with `pre`: blur runs on the floats without rounding, the spatial
/// transform maps its zero fill and brightness step through `pre`, and only the layout is applied.
pub fn make_batch(ds: &Dataset, indices: &[usize], corruption: &Corruption, pre: &Preprocess) -> Result<ArrayD<f32>> {
    let prepared = Prepared::new(corruption)?;
    let jobs: Vec<(usize, &Prepared)> = indices.iter().map(|&i| (i, &prepared)).collect();
    fill_batch(ds, &jobs, pre)
}

/// Like [`make_batch`], with its own corruption for each image: `items` holds (image index,
/// corruption) pairs, in batch order.
pub fn make_mixed_batch(ds: &Dataset, items: &[(usize, Corruption)], pre: &Preprocess) -> Result<ArrayD<f32>> {
    // A few distinct corruptions serve many images: each is prepared once.
    let mut distinct: Vec<&Corruption> = Vec::new();
    for (_, corruption) in items {
        if !distinct.contains(&corruption) {
            distinct.push(corruption);
        }
    }
    let prepared = distinct.iter().map(|c| Prepared::new(c)).collect::<Result<Vec<_>>>()?;
    let jobs: Vec<(usize, &Prepared)> = items
        .iter()
        .map(|(i, corruption)| (*i, &prepared[distinct.iter().position(|c| *c == corruption).unwrap_or(0)]))
        .collect();
    fill_batch(ds, &jobs, pre)
}

/// The batch of `jobs` (image index, prepared corruption), images prepared in parallel.
fn fill_batch(ds: &Dataset, jobs: &[(usize, &Prepared)], pre: &Preprocess) -> Result<ArrayD<f32>> {
    let images = &ds.images;
    let (n, c, h, w) = (images.len(), images.channels(), images.height(), images.width());
    pre.validate(c)?;
    if let Some((bad, _)) = jobs.iter().find(|(i, _)| *i >= n) {
        return Err(Error::Internal(format!("image index {bad} out of range for {n} images of {}", ds.source.display())));
    }
    let per_image = c * h * w;
    let mut out = vec![0f32; jobs.len() * per_image];
    match images {
        Images::U8Hwc { data, .. } => {
            let table = pre.table();
            out.par_chunks_mut(per_image.max(1)).zip(jobs.par_iter()).try_for_each(|(dst, &(i, prepared))| -> Result<()> {
                let image = &data[i * per_image..(i + 1) * per_image];
                let corrupted: Cow<[u8]> = match prepared {
                    Prepared::Clean => Cow::Borrowed(image),
                    Prepared::Blur(kernel) => Cow::Owned(kernel.blur_u8(image, h, w, c)),
                    Prepared::Spatial { level, seed } => {
                        Cow::Owned(Prepared::spatial(*level, *seed, i, h, w)?.apply(image, h, w, c))
                    }
                    Prepared::Transform(params) => Cow::Owned(params.apply(image, h, w, c)),
                };
                for (p, px) in corrupted.chunks_exact(c).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        let value = table[ch * 256 + usize::from(v)];
                        match pre.layout {
                            Layout::Nchw => dst[ch * h * w + p] = value,
                            Layout::Nhwc => dst[p * c + ch] = value,
                        }
                    }
                }
                Ok(())
            })?;
        }
        Images::F32Chw { data, .. } => {
            out.par_chunks_mut(per_image.max(1)).zip(jobs.par_iter()).try_for_each(|(dst, &(i, prepared))| -> Result<()> {
                let image = &data[i * per_image..(i + 1) * per_image];
                let corrupted: Cow<[f32]> = match prepared {
                    Prepared::Clean => Cow::Borrowed(image),
                    Prepared::Blur(kernel) => Cow::Owned(kernel.blur_f32_chw(image, c, h, w)),
                    Prepared::Spatial { level, seed } => Cow::Owned(
                        Prepared::spatial(*level, *seed, i, h, w)?
                            .apply_normalized(image, c, h, w, pre),
                    ),
                    Prepared::Transform(params) => Cow::Owned(params.apply_normalized(image, c, h, w, pre)),
                };
                match pre.layout {
                    Layout::Nchw => dst.copy_from_slice(&corrupted),
                    Layout::Nhwc => {
                        for (ch, plane) in corrupted.chunks_exact((h * w).max(1)).enumerate() {
                            for (p, &value) in plane.iter().enumerate() {
                                dst[p * c + ch] = value;
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
    let shape = match pre.layout {
        Layout::Nchw => [jobs.len(), c, h, w],
        Layout::Nhwc => [jobs.len(), h, w, c],
    };
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| Error::Internal(format!("batch shape {shape:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::data::npy::{read_npy, NpyData};
    use crate::data::{load_split, DataFormat, Split};

    /// Eight 2×3 RGB images whose values differ everywhere, labels 0..8.
    fn small() -> Dataset {
        let data: Vec<u8> = (0..8 * 2 * 3 * 3).map(|i| (i * 5 % 256) as u8).collect();
        Dataset {
            images: Images::U8Hwc { data, n: 8, h: 2, w: 3, c: 3 },
            labels: (0..8).collect(),
            classes: (0..8).map(|c| c.to_string()).collect(),
            source: PathBuf::from("memory"),
        }
    }

    fn imagenet(layout: Layout) -> Preprocess {
        Preprocess { scale: 1.0 / 255.0, mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225], layout }
    }

    /// Our preprocessing of the test images that the reference batch's rows hold (row r: image 39·r
    /// of the sorted test set), found in `data` at `position`, against those rows, bit for bit;
    /// returns how many rows were compared.
    fn assert_reproduces_reference_rows(data: &Dataset, reference: &Path, position: impl Fn(usize) -> Option<usize>) -> usize {
        let reference = read_npy(reference).unwrap();
        let NpyData::F32(expected) = &reference.data else { panic!("dtype") };
        let rows: Vec<(usize, usize)> = (0..reference.shape[0]).filter_map(|r| Some((r, position(r * 39)?))).collect();
        let indices: Vec<usize> = rows.iter().map(|&(_, at)| at).collect();
        let batch = make_batch(data, &indices, &Corruption::Clean, &imagenet(Layout::Nchw)).unwrap();
        assert_eq!(batch.shape()[1..], reference.shape[1..]);
        let size: usize = reference.shape[1..].iter().product();
        for (ours, &(r, _)) in batch.as_slice().unwrap().chunks_exact(size).zip(&rows) {
            let differing = ours.iter().zip(&expected[r * size..(r + 1) * size]).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "values of row {r} differing from the reference batch");
        }
        rows.len()
    }

    #[test]
    fn reproduces_the_reference_batch_bit_for_bit() {
        let Some(root) = crate::test_support::shared_or_skip("data/cifar10-jpg") else { return };
        let Some(reference) = crate::test_support::shared_or_skip("reference/cifar10_test256_nchw.npy") else { return };
        let test = load_split(&root, Split::Test, DataFormat::Folder).unwrap();
        assert_eq!(assert_reproduces_reference_rows(&test, &reference, Some), 256);
    }

    /// The bundled reference rows (the batch's first 64) whose images are in the bundled test
    /// subset: 4 of them.
    #[test]
    fn reproduces_the_bundled_reference_rows_bit_for_bit() {
        let test = load_split(&crate::test_support::fixture("cifar10-mini"), Split::Test, DataFormat::Folder).unwrap();
        let reference = crate::test_support::fixture("reference/cifar10_test64_nchw.npy");
        assert_eq!(assert_reproduces_reference_rows(&test, &reference, crate::test_support::mini_test_position), 4);
    }

    #[test]
    fn scales_divide_only_by_whole_reciprocals() {
        let with_scale = |scale| Preprocess { scale, mean: vec![0.0], std: vec![1.0], layout: Layout::Nchw }.table();
        assert_eq!(with_scale(1.0 / 255.0)[7], 7.0 / 255.0);
        assert_ne!(7.0 / 255.0, 7.0 * (1.0f32 / 255.0), "the case that needs the division");
        assert_eq!(with_scale(0.3)[7], 7.0 * 0.3);
        assert_eq!(with_scale(1.0)[200], 200.0);
    }

    #[test]
    fn layouts_hold_the_same_values() {
        let data = small();
        let nchw = make_batch(&data, &[5, 2], &Corruption::Clean, &imagenet(Layout::Nchw)).unwrap();
        let nhwc = make_batch(&data, &[5, 2], &Corruption::Clean, &imagenet(Layout::Nhwc)).unwrap();
        assert_eq!(nchw.shape(), &[2, 3, 2, 3]);
        assert_eq!(nhwc.shape(), &[2, 2, 3, 3]);
        assert_eq!(nchw.clone().permuted_axes(IxDyn(&[0, 2, 3, 1])), nhwc);
        // Image 5, pixel (y=1, x=2), green: value index 5·18 + (1·3 + 2)·3 + 1.
        let raw = ((5 * 18 + 16) * 5 % 256) as f32;
        assert_eq!(nchw[[0, 1, 1, 2]], (raw / 255.0 - 0.456) / 0.224);
    }

    #[test]
    fn corruptions_act_before_normalisation() {
        let data = small();
        let plain = Preprocess { scale: 1.0, mean: vec![0.0; 3], std: vec![1.0; 3], layout: Layout::Nhwc };
        let blurred = make_batch(&data, &[3], &Corruption::Blur(1.0), &plain).unwrap();
        let Images::U8Hwc { data: pixels, .. } = &data.images else { unreachable!() };
        let expected = GaussianKernel::new(1.0).unwrap().blur_u8(&pixels[3 * 18..4 * 18], 2, 3, 3);
        assert_eq!(blurred.iter().copied().collect::<Vec<f32>>(), expected.iter().map(|&v| f32::from(v)).collect::<Vec<_>>());
    }

    #[test]
    fn spatial_draws_depend_on_the_image_not_the_batch() {
        let data = small();
        let spatial = Corruption::Spatial { level: 5, seed: 9 };
        let pre = imagenet(Layout::Nchw);
        let alone = make_batch(&data, &[6], &spatial, &pre).unwrap();
        let together = make_batch(&data, &[1, 6, 4], &spatial, &pre).unwrap();
        assert_eq!(alone.index_axis(ndarray::Axis(0), 0), together.index_axis(ndarray::Axis(0), 1));
        let clean = make_batch(&data, &[6], &Corruption::Clean, &pre).unwrap();
        assert_ne!(alone, clean);
        let reseeded = make_batch(&data, &[6], &Corruption::Spatial { level: 5, seed: 10 }, &pre).unwrap();
        assert_ne!(alone, reseeded);
    }

    #[test]
    fn float_images_are_taken_as_preprocessed() {
        let values: Vec<f32> = (0..2 * 2 * 3 * 4).map(|i| i as f32 * 0.1 - 1.0).collect();
        let data = Dataset {
            images: Images::F32Chw { data: values.clone(), n: 2, c: 2, h: 3, w: 4 },
            labels: vec![0, 1],
            classes: vec!["a".into(), "b".into()],
            source: PathBuf::from("memory"),
        };
        let pre = |layout| Preprocess { scale: 1.0 / 255.0, mean: vec![0.5, 0.5], std: vec![0.25, 0.25], layout };
        let clean = make_batch(&data, &[1], &Corruption::Clean, &pre(Layout::Nchw)).unwrap();
        assert_eq!(clean.as_slice().unwrap(), &values[24..]);
        let nhwc = make_batch(&data, &[1], &Corruption::Clean, &pre(Layout::Nhwc)).unwrap();
        assert_eq!(nhwc.shape(), &[1, 3, 4, 2]);
        assert_eq!(nhwc[[0, 2, 1, 1]], values[24 + 12 + 2 * 4 + 1]);
        let blurred = make_batch(&data, &[1], &Corruption::Blur(0.5), &pre(Layout::Nchw)).unwrap();
        let expected = GaussianKernel::new(0.5).unwrap().blur_f32_chw(&values[24..], 2, 3, 4);
        assert_eq!(blurred.as_slice().unwrap(), expected.as_slice());
        let spatial = make_batch(&data, &[1], &Corruption::Spatial { level: 1, seed: 0 }, &pre(Layout::Nchw)).unwrap();
        assert!(spatial.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_requests_are_errors() {
        let data = small();
        let pre = imagenet(Layout::Nchw);
        let two_channels = Preprocess { mean: vec![0.5; 2], std: vec![0.5; 2], ..pre.clone() };
        assert!(matches!(make_batch(&data, &[0], &Corruption::Clean, &two_channels), Err(Error::Config(_))));
        assert!(make_batch(&data, &[8], &Corruption::Clean, &pre).unwrap_err().to_string().contains("index 8"));
        assert!(matches!(make_batch(&data, &[0], &Corruption::Blur(-1.0), &pre), Err(Error::Config(_))));
        assert!(matches!(make_batch(&data, &[0], &Corruption::Spatial { level: 6, seed: 0 }, &pre), Err(Error::Config(_))));
        assert_eq!(make_batch(&data, &[], &Corruption::Clean, &pre).unwrap().shape(), &[0, 3, 2, 3]);
    }

    #[test]
    fn names_are_stable() {
        let names: Vec<String> = [Corruption::Clean, Corruption::Blur(1.5), Corruption::Blur(2.0), Corruption::Spatial { level: 3, seed: 1 }]
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(names, ["clean", "blur1.5", "blur2.0", "spatial3"]);
        assert_eq!("NHWC".parse::<Layout>(), Ok(Layout::Nhwc));
        assert_eq!("chw".parse::<Layout>().unwrap_err(), "unknown layout 'chw' (allowed: nchw, nhwc)");
        let json = serde_json::to_string(&imagenet(Layout::Nhwc)).unwrap();
        assert!(json.contains("\"layout\":\"nhwc\""), "{json}");
    }
}
