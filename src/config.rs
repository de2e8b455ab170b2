//! The YAML configuration: every field validated, every field overridable by a command-line flag.
//! Precedence: built-in defaults < configuration file < flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{BackendKind, Device};
use crate::data::{CorruptionKind, Corruptions, DataFormat, Layout};
use crate::error::{Error, Result};

/// The σ values of the blur augmentor (docs/specification.md §2).
pub const SIGMAS: [f32; 6] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0];

/// Bounds of the numeric settings that size work: beyond them a backend aborts or memory runs out.
pub const MAX_THREADS: usize = 1024;
pub const MAX_BATCH: usize = 65_536;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub preprocess: PreprocessConfig,
    pub backend: BackendConfig,
    pub eval: EvalConfig,
    pub assess: AssessConfig,
    pub train: TrainConfig,
    pub calibrate: CalibrateConfig,
}

/// How the filter assessment runs (docs/assessment.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AssessConfig {
    pub method: AssessMethod,
}

/// Which assessment method runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AssessMethod {
    /// Every filter's exact count (the default).
    #[default]
    Exact,
    /// The exact method's blamed filters, exact counts only where the screen leaves them in doubt.
    Screened,
    /// Screened when the exact method would run more than `assess::AUTO_SCREEN_ABOVE` (filter,
    /// image) pairs, else exact.
    Auto,
}

/// How the γ decision is judged (see `calibrate`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrateConfig {
    /// How far (points) the lower confidence bound on a rule's clean-accuracy change may go below 0.
    pub clean_tolerance: f64,
    /// Confidence of that one-sided bound.
    pub confidence: f64,
}

impl Default for CalibrateConfig {
    fn default() -> Self {
        CalibrateConfig { clean_tolerance: 0.3, confidence: 0.95 }
    }
}

/// Where the images are and how the validation split is drawn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder holding the training and test data (`train/` and `test/` image folders, CIFAR
    /// binary batches or NPY pairs).
    pub root: Option<PathBuf>,
    pub format: DataFormat,
    /// Share of the training data held out as T_val (stratified).
    pub val_fraction: f64,
    /// Number of validation images instead of a fraction.
    pub val_size: Option<usize>,
    /// Seed of the split and of every random draw.
    pub seed: u64,
    /// The corruptions every stage uses: blur, spatial, folder=DIR (see `crate::data::corruption`).
    pub corruption: Corruptions,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { root: None, format: DataFormat::Auto, val_fraction: 0.02, val_size: None, seed: 2022, corruption: Corruptions::default() }
    }
}

/// How 8-bit images become the model's input tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Multiplier applied to 8-bit values before normalisation.
    pub scale: f32,
    /// Per-channel mean and standard deviation, after scaling.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Layout,
    /// The model input that receives the images (default: the model's only input).
    pub input: Option<String>,
    /// The model output holding the logits (default: the model's first output).
    pub output: Option<String>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            scale: 1.0 / 255.0,
            mean: vec![0.0, 0.0, 0.0],
            std: vec![1.0, 1.0, 1.0],
            layout: Layout::Nchw,
            input: None,
            output: None,
        }
    }
}

/// Which inference engine runs the models.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub device: Device,
    /// ort: intra-op threads; tract: independent runs side by side (default: all cores; see
    /// `BackendOptions::threads`).
    pub threads: Option<usize>,
}

/// Evaluation settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub batch_size: usize,
    /// Blur levels of the robustness columns.
    pub sigmas: Vec<f32>,
    /// Evaluate on a stratified subset of this many test images.
    pub limit: Option<usize>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { batch_size: 256, sigmas: SIGMAS.to_vec(), limit: None }
    }
}

/// Retraining of the replacement filters (docs/specification.md §3.3); the defaults are the authors' code's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Blamed ratio κ: the first ⌊κ·m⌋ filters of each layer's ranking get replacements.
    pub kappa: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: LearningRate,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Period of the cosine annealing, in epochs (PyTorch's `CosineAnnealingLR(T_max)`).
    pub t_max: usize,
    /// Re-estimate the replacement channels' BatchNormalization statistics after training.
    pub bn_adapt: bool,
    /// How the replacement filters start.
    pub init: ReplacementInit,
    /// Which spatial variant of a T_train° image is trained on.
    pub selection: Selection,
}

/// How a training image's spatial variant is chosen each epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// One variant drawn at random (GenRobust's augmentation; the default).
    #[default]
    Random,
    /// SENSEI's selection: [`SENSEI_CANDIDATES`] variants drawn, the one with the highest loss
    /// under the current β model trained on (the DP+SS pipeline).
    Sensei,
}

/// The population of SENSEI's selection, as in the paper.
pub const SENSEI_CANDIDATES: usize = 10;

/// The starting point of the replacement filters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReplacementInit {
    /// Fresh filters, PyTorch's Conv2d default (Kaiming-uniform): the paper's algorithm. On a model
    /// whose BatchNormalization is folded nothing normalises them, and training may diverge.
    Kaiming,
    /// Copies of the blamed filters (the default): the β model starts as the original model, so
    /// training starts from its accuracy and only moves it towards robustness (docs/training.md
    /// has the measurements that chose it).
    #[default]
    Original,
}

/// The initial learning rate: a number, or `auto` (the default): a short trial of each of
/// [`AUTO_LEARNING_RATES`] from the same start, the one best on T_val° kept. No single rate suits
/// every model: the authors' 0.01 wrecks ResNet20 with folded BatchNormalization, while 0.001
/// leaves a small VGG under-trained (docs/training.md has the figures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LearningRate {
    Auto,
    Fixed(f64),
}

/// The candidates of `learning_rate: auto`: the authors' rate and a tenth of it.
pub const AUTO_LEARNING_RATES: [f64; 2] = [0.01, 0.001];

impl std::str::FromStr for LearningRate {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "auto" => Ok(LearningRate::Auto),
            number => number.parse().map(LearningRate::Fixed).map_err(|_| format!("'{text}' is neither a number nor 'auto'")),
        }
    }
}

impl std::fmt::Display for LearningRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LearningRate::Auto => f.write_str("auto"),
            LearningRate::Fixed(rate) => write!(f, "{rate}"),
        }
    }
}

impl Serialize for LearningRate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            LearningRate::Auto => serializer.serialize_str("auto"),
            LearningRate::Fixed(rate) => serializer.serialize_f64(*rate),
        }
    }
}

impl<'de> Deserialize<'de> for LearningRate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(rate) => Ok(LearningRate::Fixed(rate)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { kappa: 0.25, epochs: 20, batch_size: 256, learning_rate: LearningRate::Auto, momentum: 0.9, weight_decay: 5e-4, t_max: 200, bn_adapt: false, init: ReplacementInit::Original, selection: Selection::Random }
    }
}

impl Config {
    /// Reads and validates a YAML configuration file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = crate::onnx::io::read_text(path, crate::onnx::io::TEXT_LIMIT).map_err(|e| match e {
            Error::Io { .. } => e,
            other => Error::Config(other.to_string()),
        })?;
        let mut config: Config = serde_yaml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        // Relative paths in a file are relative to that file, so a pipeline can run it from anywhere.
        if let (Some(root), Some(folder)) = (config.data.root.as_mut(), path.parent()) {
            if root.is_relative() {
                *root = folder.join(&*root);
            }
        }
        if let Some(folder) = path.parent() {
            config.data.corruption.resolve(folder);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the field and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let fail = |field: &str, message: String| Err(Error::Config(format!("{field}: {message}")));
        let d = &self.data;
        if !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
            return fail("data.val_fraction", format!("{} is not in (0, 1)", d.val_fraction));
        }
        if d.val_size == Some(0) {
            return fail("data.val_size", "must be at least 1".into());
        }
        if let Err(message) = d.corruption.validate() {
            return fail("data.corruption", message);
        }
        if self.train.selection == Selection::Sensei && !d.corruption.0.contains(&CorruptionKind::Spatial) {
            return fail("train.selection", "sensei selects among spatial variants; add spatial to data.corruption".into());
        }
        let p = &self.preprocess;
        if !(p.scale.is_finite() && p.scale > 0.0) {
            return fail("preprocess.scale", format!("{} is not a positive number", p.scale));
        }
        if p.mean.is_empty() || p.mean.len() != p.std.len() {
            return fail("preprocess.mean", format!("{} values for {} std values; give one per channel", p.mean.len(), p.std.len()));
        }
        if let Some(bad) = p.mean.iter().find(|m| !m.is_finite()) {
            return fail("preprocess.mean", format!("{bad} is not a finite number"));
        }
        if let Some(bad) = p.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return fail("preprocess.std", format!("{bad} is not a positive number"));
        }
        if let Some(threads) = self.backend.threads.filter(|t| !(1..=MAX_THREADS).contains(t)) {
            return fail("backend.threads", format!("{threads} is not in [1, {MAX_THREADS}]"));
        }
        let e = &self.eval;
        if !(1..=MAX_BATCH).contains(&e.batch_size) {
            return fail("eval.batch_size", format!("{} is not in [1, {MAX_BATCH}]", e.batch_size));
        }
        if let Some(bad) = e.sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0 && **s <= 32.0)) {
            return fail("eval.sigmas", format!("{bad} is not in (0, 32]"));
        }
        if e.limit == Some(0) {
            return fail("eval.limit", "must be at least 1".into());
        }
        let t = &self.train;
        if !(t.kappa > 0.0 && t.kappa <= 1.0) {
            return fail("train.kappa", format!("{} is not in (0, 1]", t.kappa));
        }
        if t.epochs == 0 {
            return fail("train.epochs", "must be at least 1".into());
        }
        if !(1..=MAX_BATCH).contains(&t.batch_size) {
            return fail("train.batch_size", format!("{} is not in [1, {MAX_BATCH}]", t.batch_size));
        }
        if let LearningRate::Fixed(rate) = t.learning_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return fail("train.learning_rate", format!("{rate} is not a positive number"));
            }
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return fail("train.momentum", format!("{} is not in [0, 1)", t.momentum));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return fail("train.weight_decay", format!("{} is not a non-negative number", t.weight_decay));
        }
        if t.t_max == 0 {
            return fail("train.t_max", "must be at least 1".into());
        }
        let c = &self.calibrate;
        if !(c.clean_tolerance.is_finite() && (0.0..=100.0).contains(&c.clean_tolerance)) {
            return fail("calibrate.clean_tolerance", format!("{} is not in [0, 100] (points)", c.clean_tolerance));
        }
        if !(c.confidence > 0.5 && c.confidence < 1.0) {
            return fail("calibrate.confidence", format!("{} is not in (0.5, 1)", c.confidence));
        }
        Ok(())
    }

    /// The data root, or an error saying how to give one.
    pub fn data_root(&self) -> Result<&Path> {
        self.data.root.as_deref().ok_or_else(|| Error::Config("data.root: no data given (use --data DIR or data.root in the configuration)".into()))
    }
}

/// Command-line flags that override configuration fields, one per field.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Data folder holding train/ and test/ (data.root; no default).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Data format: auto, folder, cifar10, cifar100, npy (data.format) [default: auto].
    #[arg(long)]
    pub format: Option<DataFormat>,
    /// Validation share of the training data, stratified (data.val_fraction) [default: 0.02].
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Validation images instead of a share (data.val_size) [default: none, the share].
    #[arg(long)]
    pub val_size: Option<usize>,
    /// Seed of the split and random draws (data.seed) [default: 2022].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Corruptions, comma separated: blur, spatial, folder=DIR (data.corruption) [default: blur].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub corruption: Option<Vec<CorruptionKind>>,
    /// Scale of 8-bit values (preprocess.scale) [default: 1/255].
    #[arg(long)]
    pub scale: Option<f32>,
    /// Per-channel mean after scaling, comma separated (preprocess.mean) [default: 0,0,0].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, comma separated (preprocess.std) [default: 1,1,1].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub std: Option<Vec<f32>>,
    /// Tensor layout: nchw or nhwc (preprocess.layout) [default: nchw].
    #[arg(long)]
    pub layout: Option<Layout>,
    /// Model input fed with images (preprocess.input) [default: the model's only input].
    #[arg(long)]
    pub input: Option<String>,
    /// Model output holding the logits (preprocess.output) [default: the model's first output].
    #[arg(long)]
    pub output: Option<String>,
    /// Inference backend: tract or ort (backend.kind) [default: tract].
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// Device: cpu, cuda or cuda:N (backend.device) [default: cpu].
    #[arg(long)]
    pub device: Option<Device>,
    /// Threads, 1 to 1024: ort's intra-op threads, or tract's independent runs side by side (backend.threads) [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Evaluation batch size (eval.batch_size) [default: 256].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Blur levels, comma separated (eval.sigmas) [default: 0.5,1,1.5,2,2.5,3].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub sigmas: Option<Vec<f32>>,
    /// Evaluate on a stratified subset of N test images (eval.limit) [default: all].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Training epochs (train.epochs) [default: 20].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training batch size (train.batch_size) [default: 256].
    #[arg(long)]
    pub train_batch_size: Option<usize>,
    /// Initial learning rate, a number or `auto`: the better of 0.01 and 0.001 on T_val° after a
    /// quarter-epoch trial of each (train.learning_rate) [default: auto].
    #[arg(long, value_name = "RATE|auto")]
    pub learning_rate: Option<LearningRate>,
    /// SGD momentum (train.momentum) [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// SGD weight decay (train.weight_decay) [default: 0.0005].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Cosine annealing period in epochs (train.t_max) [default: 200].
    #[arg(long)]
    pub t_max: Option<usize>,
    /// Re-estimate BatchNormalization statistics of the replacement channels (train.bn_adapt) [default: off].
    #[arg(long)]
    pub bn_adapt: bool,
    /// Start of the replacement filters: original (copies of the blamed filters) or kaiming (the paper's fresh filters) (train.init) [default: original].
    #[arg(long, value_enum)]
    pub init: Option<ReplacementInit>,
    /// Spatial variant trained on: random, or sensei (the worst of 10 under the current model) (train.selection) [default: random].
    #[arg(long, value_enum)]
    pub selection: Option<Selection>,
    /// Points the lower bound on a rule's clean-accuracy change may fall below 0 (calibrate.clean_tolerance) [default: 0.3].
    #[arg(long)]
    pub clean_tolerance: Option<f64>,
    /// Confidence of that one-sided bound (calibrate.confidence) [default: 0.95].
    #[arg(long)]
    pub confidence: Option<f64>,
}

impl Overrides {
    /// Applies the flags given on top of `config` and validates the result.
    pub fn apply(&self, mut config: Config) -> Result<Config> {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        let c = &mut config;
        if self.data.is_some() {
            c.data.root = self.data.clone();
        }
        set(&mut c.data.format, &self.format);
        set(&mut c.data.val_fraction, &self.val_fraction);
        if self.val_size.is_some() {
            c.data.val_size = self.val_size;
        }
        set(&mut c.data.seed, &self.seed);
        if let Some(kinds) = &self.corruption {
            c.data.corruption = Corruptions(kinds.clone());
        }
        set(&mut c.preprocess.scale, &self.scale);
        set(&mut c.preprocess.mean, &self.mean);
        set(&mut c.preprocess.std, &self.std);
        set(&mut c.preprocess.layout, &self.layout);
        if self.input.is_some() {
            c.preprocess.input = self.input.clone();
        }
        if self.output.is_some() {
            c.preprocess.output = self.output.clone();
        }
        set(&mut c.backend.kind, &self.backend);
        set(&mut c.backend.device, &self.device);
        if self.threads.is_some() {
            c.backend.threads = self.threads;
        }
        set(&mut c.eval.batch_size, &self.batch_size);
        set(&mut c.eval.sigmas, &self.sigmas);
        if self.limit.is_some() {
            c.eval.limit = self.limit;
        }
        set(&mut c.train.epochs, &self.epochs);
        set(&mut c.train.batch_size, &self.train_batch_size);
        set(&mut c.train.learning_rate, &self.learning_rate);
        set(&mut c.train.momentum, &self.momentum);
        set(&mut c.train.weight_decay, &self.weight_decay);
        set(&mut c.train.t_max, &self.t_max);
        c.train.bn_adapt |= self.bn_adapt;
        set(&mut c.train.init, &self.init);
        set(&mut c.train.selection, &self.selection);
        set(&mut c.calibrate.clean_tolerance, &self.clean_tolerance);
        set(&mut c.calibrate.confidence, &self.confidence);
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn defaults_are_the_papers() {
        let config = parse("{}").unwrap();
        assert_eq!(config.data.val_fraction, 0.02);
        assert_eq!(config.data.seed, 2022);
        assert_eq!(config.eval.sigmas, SIGMAS.to_vec());
    }

    #[test]
    fn errors_name_the_field() {
        let typo = parse("data:\n  val_fracton: 0.1\n").unwrap_err().to_string();
        assert!(typo.contains("val_fracton"), "{typo}");
        let range = parse("data:\n  val_fraction: 1.5\n").unwrap_err().to_string();
        assert!(range.contains("data.val_fraction"), "{range}");
        let std = parse("preprocess:\n  mean: [0.5, 0.5, 0.5]\n  std: [0.2, 0.0, 0.2]\n").unwrap_err().to_string();
        assert!(std.contains("preprocess.std"), "{std}");
        let backend = parse("backend:\n  kind: tensorrt\n").unwrap_err().to_string();
        assert!(backend.contains("tensorrt"), "{backend}");
    }

    /// The example the README names holds every default, so it documents what runs.
    #[test]
    fn the_example_configuration_is_the_defaults() {
        let example = Config::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deeppatch.yaml")).unwrap();
        let defaults = Config::default();
        assert_eq!((&example.train, &example.eval, &example.calibrate, &example.backend), (&defaults.train, &defaults.eval, &defaults.calibrate, &defaults.backend));
        assert_eq!(example.assess, defaults.assess);
        assert_eq!((example.data.val_fraction, example.data.seed, example.data.format), (defaults.data.val_fraction, defaults.data.seed, defaults.data.format));
        assert!(example.data.root.unwrap().join("train").is_dir());
    }

    #[test]
    fn work_sizes_are_bounded() {
        let threads = parse("backend:\n  threads: 100000\n").unwrap_err().to_string();
        assert!(threads.contains("backend.threads") && threads.contains("1024"), "{threads}");
        assert!(parse("train:\n  batch_size: 1000000\n").is_err());
        assert!(parse("calibrate:\n  confidence: 1.0\n").is_err());
    }

    #[test]
    fn corruptions_and_selection() {
        let config = parse("data:\n  corruption: [spatial, blur]\ntrain:\n  selection: sensei\n").unwrap();
        assert_eq!(config.data.corruption.0, vec![CorruptionKind::Spatial, CorruptionKind::Blur]);
        let sensei = parse("train:\n  selection: sensei\n").unwrap_err().to_string();
        assert!(sensei.contains("train.selection") && sensei.contains("add spatial"), "{sensei}");
        assert!(parse("data:\n  corruption: []\n").unwrap_err().to_string().contains("data.corruption"));
        let flags = Overrides { corruption: Some(vec![CorruptionKind::Folder("field".into())]), ..Default::default() };
        assert_eq!(flags.apply(Config::default()).unwrap().data.corruption.0, vec![CorruptionKind::Folder("field".into())]);
    }

    #[test]
    fn flags_override_the_file() {
        let config = parse("eval:\n  batch_size: 64\n").unwrap();
        let flags = Overrides { batch_size: Some(32), mean: Some(vec![0.1, 0.2, 0.3]), std: Some(vec![1.0; 3]), ..Default::default() };
        let merged = flags.apply(config).unwrap();
        assert_eq!(merged.eval.batch_size, 32);
        assert_eq!(merged.preprocess.mean, vec![0.1, 0.2, 0.3]);
    }
}
