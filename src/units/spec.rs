//! The patch specification: which filters of which convolutions are replaced, the replacement
//! weights, and the γ decision rule. File form: JSON for the structure, the arrays in an NPZ archive
//! beside it (`<spec>.npz`, keys `layer<i>.weight`, `layer<i>.bias`, `layer<i>.bn_*`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::analysis::{convolutions, ConvInfo};
use crate::data::npy::{read_npz, write_npz, NpyArray, NpyData};
use crate::error::{Error, Result};
use crate::onnx::proto::ModelProto;

/// Version of the file form.
pub const SPEC_FORMAT: u32 = 1;

/// Replacement filters for one convolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerPatch {
    /// The Conv node's name (its output value's name when the node has none).
    pub conv: String,
    /// Output channels whose filters are replaced, ascending.
    pub blamed: Vec<usize>,
    /// Replacement kernels [k, C/group, kh, kw] at the blamed positions, in `blamed` order.
    #[serde(skip)]
    pub weight: ArrayD<f32>,
    /// Replacement biases [k] when the convolution has a bias.
    #[serde(skip)]
    pub bias: Option<ArrayD<f32>>,
    /// BatchNormalization parameters of the replacement channels (scale, bias, mean, var; [k] each)
    /// when a BatchNormalization follows the convolution and `bn_adapt` re-estimated them.
    #[serde(skip)]
    pub batchnorm: Option<[ArrayD<f32>; 4]>,
}

/// Which side of the boundary is adapted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Adapt when CR < b (the authors' code, where clean images have the larger CR).
    Below,
    /// Adapt when CR > b (the paper's text).
    Above,
}

/// The per-sample γ decision: a rule fed by the first patched layer (docs/specification.md
/// §3.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Decision {
    /// The Corrective Rate at the first patched layer against a boundary.
    Cr { boundary: f32, direction: Direction, mu_clean: Option<f32>, mu_aug: Option<f32> },
    /// A logistic regression on channel statistics of the first patched convolution's original
    /// output z (see `decision::probe_features`): adapt when
    /// `bias + Σ weights[i] · (feature[i] − mean[i]) / std[i] > 0`. Features are ordered
    /// [mean relu(z_c) for every c, share of z_c > 0 for every c, mean |neighbour difference of
    /// z_c| for every c], 3·C values for C channels.
    Probe { mean: Vec<f32>, std: Vec<f32>, weights: Vec<f32>, bias: f32 },
}

impl Decision {
    /// A CR decision that adapts every sample (CR lies in [0, 1]).
    pub fn adapt_all() -> Decision {
        Decision::Cr { boundary: 2.0, direction: Direction::Below, mu_clean: None, mu_aug: None }
    }

    /// A CR decision that adapts no sample.
    pub fn adapt_none() -> Decision {
        Decision::Cr { boundary: -1.0, direction: Direction::Below, mu_clean: None, mu_aug: None }
    }

    /// The rule's name as in the file form (`cr`, `probe`).
    pub fn rule(&self) -> &'static str {
        match self {
            Decision::Cr { .. } => "cr",
            Decision::Probe { .. } => "probe",
        }
    }

    /// Checks a probe's parameters against the C channels of the layer that feeds it.
    pub fn validate(&self, channels: usize) -> Result<()> {
        let Decision::Probe { mean, std, weights, bias } = self else { return Ok(()) };
        let expected = 3 * channels;
        for (field, values) in [("mean", mean), ("std", std), ("weights", weights)] {
            if values.len() != expected {
                return Err(Error::Config(format!("patch spec, decision.{field}: {} values, the probe needs 3 × {channels} = {expected}", values.len())));
            }
            if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                return Err(Error::Config(format!("patch spec, decision.{field}: {bad} is not a finite number")));
            }
        }
        if let Some(bad) = std.iter().find(|s| **s <= 0.0) {
            return Err(Error::Config(format!("patch spec, decision.std: {bad} is not positive")));
        }
        if !bias.is_finite() {
            return Err(Error::Config(format!("patch spec, decision.bias: {bias} is not a finite number")));
        }
        Ok(())
    }
}

/// A whole patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchSpec {
    pub format: u32,
    /// SHA-256 of the model the spec was made for (checked when given).
    pub model_sha256: Option<String>,
    pub kappa: f64,
    pub layers: Vec<LayerPatch>,
    pub decision: Decision,
    /// Provenance carried into the patched model's metadata (training summary, data fingerprint).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl PatchSpec {
    /// Reads `path` (JSON) and its arrays (`path` with extension `.npz`).
    pub fn load(path: &Path) -> Result<PatchSpec> {
        let text = crate::onnx::io::read_text(path, crate::onnx::io::TEXT_LIMIT)?;
        let mut spec: PatchSpec =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if spec.format != SPEC_FORMAT {
            return Err(Error::Config(format!("{}: format {} is not supported (expected {SPEC_FORMAT})", path.display(), spec.format)));
        }
        let arrays_path = weights_path(path);
        let mut arrays = read_npz(&arrays_path)?;
        let mut take = |key: String| -> Result<Option<ArrayD<f32>>> {
            arrays.remove(&key).map(|a| to_array(a, &arrays_path, &key)).transpose()
        };
        for (i, layer) in spec.layers.iter_mut().enumerate() {
            layer.weight = take(format!("layer{i}.weight"))?
                .ok_or_else(|| Error::data(&arrays_path, format!("no array layer{i}.weight for convolution '{}'", layer.conv)))?;
            layer.bias = take(format!("layer{i}.bias"))?;
            let bn = ["scale", "bias", "mean", "var"].map(|p| take(format!("layer{i}.bn_{p}")));
            layer.batchnorm = match bn {
                [Ok(Some(a)), Ok(Some(b)), Ok(Some(c)), Ok(Some(d))] => Some([a, b, c, d]),
                [Ok(None), Ok(None), Ok(None), Ok(None)] => None,
                _ => return Err(Error::data(&arrays_path, format!("layer{i}: incomplete batchnorm arrays"))),
            };
        }
        Ok(spec)
    }

    /// Writes the JSON to `path` and the arrays beside it, both atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut arrays = BTreeMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            arrays.insert(format!("layer{i}.weight"), from_array(&layer.weight));
            if let Some(bias) = &layer.bias {
                arrays.insert(format!("layer{i}.bias"), from_array(bias));
            }
            if let Some(bn) = &layer.batchnorm {
                for (name, array) in ["scale", "bias", "mean", "var"].iter().zip(bn) {
                    arrays.insert(format!("layer{i}.bn_{name}"), from_array(array));
                }
            }
        }
        write_npz(&weights_path(path), &arrays)?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        crate::onnx::io::write_atomically(path, format!("{json}\n").as_bytes())
    }

    /// Checks the spec against the model's convolutions: names, channel indices, array shapes.
    pub fn validate(&self, model: &ModelProto) -> Result<Vec<ConvInfo>> {
        let convs = convolutions(model)?;
        let mut matched = Vec::new();
        for layer in &self.layers {
            let conv = find_conv(&convs, &layer.conv)?;
            let fail = |message: String| Err(Error::Config(format!("patch spec, convolution '{}': {message}", layer.conv)));
            if !conv.constant {
                return fail("its weights are not constant".into());
            }
            if layer.blamed.is_empty() || layer.blamed.windows(2).any(|w| w[0] >= w[1]) {
                return fail("blamed channels must be non-empty, ascending and distinct".into());
            }
            if let Some(&bad) = layer.blamed.iter().find(|&&c| c >= conv.filters) {
                return fail(format!("channel {bad} does not exist ({} filters)", conv.filters));
            }
            let mut expected = vec![layer.blamed.len(), conv.channels_per_group];
            expected.extend(&conv.kernel);
            if layer.weight.shape() != expected.as_slice() {
                return fail(format!("replacement weights have shape {:?}, expected {expected:?}", layer.weight.shape()));
            }
            if layer.bias.is_some() != conv.has_bias {
                return fail(if conv.has_bias { "a bias is required".into() } else { "the convolution has no bias".into() });
            }
            let k = [layer.blamed.len()];
            if layer.bias.as_ref().is_some_and(|b| b.shape() != k) || layer.batchnorm.as_ref().is_some_and(|bn| bn.iter().any(|a| a.shape() != k)) {
                return fail(format!("bias and batchnorm arrays must have shape {k:?}"));
            }
            if matched.iter().any(|c: &ConvInfo| c.position == conv.position) {
                return fail("listed twice".into());
            }
            matched.push(conv.clone());
        }
        if matched.is_empty() {
            return Err(Error::Config("patch spec: no layers".into()));
        }
        Ok(matched)
    }
}

/// The convolution named `name` (node name, or output value name).
pub fn find_conv<'c>(convs: &'c [ConvInfo], name: &str) -> Result<&'c ConvInfo> {
    convs
        .iter()
        .find(|c| c.name == name)
        .or_else(|| convs.iter().find(|c| c.output == name))
        .ok_or_else(|| Error::Config(format!("the model has no convolution named '{name}'")))
}

/// Where the arrays of the spec at `path` live.
pub fn weights_path(path: &Path) -> PathBuf {
    path.with_extension("npz")
}

fn to_array(array: NpyArray, path: &Path, key: &str) -> Result<ArrayD<f32>> {
    match array.data {
        NpyData::F32(values) => ArrayD::from_shape_vec(IxDyn(&array.shape), values).map_err(|e| Error::data(path, format!("{key}: {e}"))),
        other => Err(Error::data(path, format!("{key}: expected float32, found {}", other.descr()))),
    }
}

fn from_array(array: &ArrayD<f32>) -> NpyArray {
    NpyArray { shape: array.shape().to_vec(), data: NpyData::F32(array.iter().copied().collect()) }
}

/// Replacement filters initialised as PyTorch's Conv2d default (Kaiming-uniform with a = √5, i.e.
/// U(−1/√fan_in, 1/√fan_in) for weights and biases), from a seeded generator.
pub fn init_replacement(conv: &ConvInfo, blamed: Vec<usize>, rng: &mut impl Rng) -> LayerPatch {
    let fan_in = conv.channels_per_group * conv.kernel.iter().product::<usize>();
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    let mut shape = vec![blamed.len(), conv.channels_per_group];
    shape.extend(&conv.kernel);
    let weight = ArrayD::from_shape_simple_fn(IxDyn(&shape), || rng.gen_range(-bound..=bound));
    let bias = conv.has_bias.then(|| ArrayD::from_shape_simple_fn(IxDyn(&[blamed.len()]), || rng.gen_range(-bound..=bound)));
    LayerPatch { conv: conv.name.clone(), blamed, weight, bias, batchnorm: None }
}

/// A spec for tests and benchmarks: the first ⌊κ·m⌋ filters of every patchable convolution blamed,
/// freshly initialised replacements, the given decision.
pub fn random_spec(model: &ModelProto, kappa: f64, seed: u64, decision: Decision) -> Result<PatchSpec> {
    if !(0.0..=1.0).contains(&kappa) {
        return Err(Error::Config(format!("kappa: {kappa} is not in [0, 1]")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let layers: Vec<LayerPatch> = convolutions(model)?
        .iter()
        .filter(|c| c.constant)
        .filter_map(|c| {
            let count = (kappa * c.filters as f64).floor() as usize;
            (count > 0).then(|| init_replacement(c, (0..count).collect(), &mut rng))
        })
        .collect();
    Ok(PatchSpec { format: SPEC_FORMAT, model_sha256: Some(model_sha256(model)), kappa, layers, decision, metadata: BTreeMap::new() })
}

/// SHA-256 of a model's encoding, hex.
pub fn model_sha256(model: &ModelProto) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(prost::Message::encode_to_vec(model));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A boundary given on the command line: one that adapts every sample, none, or a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Boundary {
    AdaptAll,
    AdaptNone,
    Value(f32),
}

impl std::str::FromStr for Boundary {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "adapt-all" => Ok(Boundary::AdaptAll),
            "adapt-none" => Ok(Boundary::AdaptNone),
            value => value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Boundary::Value)
                .ok_or_else(|| format!("'{value}' is not adapt-all, adapt-none or a number")),
        }
    }
}

impl PatchSpec {
    /// Replaces the decision by a CR boundary (a value keeps a CR rule's direction and means; a
    /// probe gives way to a CR rule that adapts below the value).
    pub fn set_boundary(&mut self, boundary: Boundary) {
        self.decision = match (boundary, &self.decision) {
            (Boundary::AdaptAll, _) => Decision::adapt_all(),
            (Boundary::AdaptNone, _) => Decision::adapt_none(),
            (Boundary::Value(value), Decision::Cr { direction, mu_clean, mu_aug, .. }) => {
                Decision::Cr { boundary: value, direction: *direction, mu_clean: *mu_clean, mu_aug: *mu_aug }
            }
            (Boundary::Value(value), Decision::Probe { .. }) => {
                Decision::Cr { boundary: value, direction: Direction::Below, mu_clean: None, mu_aug: None }
            }
        };
    }
}
