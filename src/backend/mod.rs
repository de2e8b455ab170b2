//! Inference backends behind one [`Session`] interface: tract (pure Rust, always available, the
//! embedded default) and ONNX Runtime (loaded at run time, on the CPU or through its CUDA execution
//! provider). Evaluation, assessment and the generated training-step graphs run on either.

mod ort;
mod pool;
pub mod stepping;
mod tract;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::onnx::proto;
use crate::tensor::Tensor;

pub use self::pool::{workers, Pool};

/// Which runtime executes the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract: pure Rust, built in, CPU only.
    #[default]
    Tract,
    /// ONNX Runtime, found at run time (see the `ort` module for where it is looked for).
    Ort,
}

impl BackendKind {
    /// The name used in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [BackendKind::Tract, BackendKind::Ort]
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown backend '{s}' (allowed: tract, ort)")))
    }
}

/// Where the graphs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by its index, through ONNX Runtime's CUDA execution provider.
    Cuda(u32),
}

impl Device {
    /// Parses `cpu`, `cuda` (GPU 0) or `cuda:N`; the error is the message alone so that both
    /// [`FromStr`] and serde can wrap it.
    fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (allowed: cpu, cuda, cuda:N)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Device::parse(s).map_err(Error::Config)
    }
}

/// Written as in configurations: `cpu`, `cuda:N`.
impl Serialize for Device {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Device::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How to open a [`Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendOptions {
    pub kind: BackendKind,
    pub device: Device,
    /// ort: threads inside one operator (ONNX Runtime's intra-op pool); `None` lets the runtime
    /// decide. tract: one run uses one thread, so this is how many independent runs (batches,
    /// chunks of masked images) a [`Pool`] makes side by side, each on its own session; `None`: one
    /// per core.
    pub threads: Option<usize>,
}

/// A model loaded on a backend, ready to run batches.
pub trait Session: Send {
    /// The graph inputs in file order, those with a default (an initializer of the same name)
    /// included.
    fn input_names(&self) -> &[String];

    /// The graph outputs in file order: the order of [`Session::run`]'s results.
    fn output_names(&self) -> &[String];

    /// Runs the graph on named inputs. Inputs with a default may be left out; every other input
    /// must be given, and a name the graph does not have is an error.
    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>>;

    /// [`Session::run`] on a graph that computes each sample on its own: the inputs named in
    /// `per_sample` hold one sample per row of their first axis, the others are shared, and every
    /// output holds one row per sample. A backend may group the rows as it runs fastest; the
    /// default runs them together.
    fn run_samples(&mut self, inputs: &[(&str, &Tensor)], _per_sample: &[&str]) -> Result<Vec<Tensor>> {
        self.run(inputs)
    }
}

/// Opens `model` (an encoded `ModelProto` with all its data inline) on the backend and device of
/// `options`.
pub fn open_session(model: &[u8], options: &BackendOptions) -> Result<Box<dyn Session>> {
    if options.threads == Some(0) {
        return Err(Error::Config("threads must be at least 1 (or left unset)".into()));
    }
    if options.kind == BackendKind::Tract && options.device != Device::Cpu {
        return Err(Error::Config(format!(
            "the tract backend runs on the CPU only; use the ort backend for device {}",
            options.device
        )));
    }
    let signature = Signature::decode(model)?;
    match options.kind {
        BackendKind::Tract => Ok(Box::new(self::tract::TractSession::open(model, signature)?)),
        BackendKind::Ort => Ok(Box::new(self::ort::OrtSession::open(model, signature, options)?)),
    }
}

/// The graph's interface as the file declares it. Both backends take names, order and defaults
/// from here, so they agree on them whatever their runtimes report.
#[derive(Debug)]
struct Signature {
    inputs: Vec<String>,
    /// Per input: whether an initializer of the same name gives it a default.
    has_default: Vec<bool>,
    outputs: Vec<String>,
}

impl Signature {
    fn decode(model: &[u8]) -> Result<Self> {
        let model =
            proto::ModelProto::decode(model).map_err(|e| Error::InvalidGraph(format!("not an ONNX model: {e}")))?;
        let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidGraph("the model has no graph".into()))?;
        let initialized: HashSet<&str> = graph
            .initializer
            .iter()
            .chain(graph.sparse_initializer.iter().filter_map(|sparse| sparse.values.as_ref()))
            .map(|tensor| tensor.name())
            .collect();
        Ok(Signature {
            inputs: graph.input.iter().map(|input| input.name().to_owned()).collect(),
            has_default: graph.input.iter().map(|input| initialized.contains(input.name())).collect(),
            outputs: graph.output.iter().map(|output| output.name().to_owned()).collect(),
        })
    }

    /// The position in [`Signature::inputs`] of every fed value, after checking that each name is
    /// an input, none is fed twice and every input without a default is fed.
    fn bind(&self, fed: &[(&str, &Tensor)]) -> Result<Vec<usize>> {
        let mut positions = Vec::with_capacity(fed.len());
        for (name, _) in fed {
            let position = self.inputs.iter().position(|input| input == name).ok_or_else(|| {
                Error::Config(format!("the model has no input '{name}' (its inputs: {})", self.inputs.join(", ")))
            })?;
            if positions.contains(&position) {
                return Err(Error::Config(format!("input '{name}' is given twice")));
            }
            positions.push(position);
        }
        match (0..self.inputs.len()).find(|i| !self.has_default[*i] && !positions.contains(i)) {
            Some(missing) => Err(Error::Config(format!(
                "input '{}' is required (it has no default) but was not given",
                self.inputs[missing]
            ))),
            None => Ok(positions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_kind_parses_and_prints() {
        assert_eq!("tract".parse::<BackendKind>().unwrap(), BackendKind::Tract);
        assert_eq!("ort".parse::<BackendKind>().unwrap(), BackendKind::Ort);
        assert_eq!(BackendKind::Ort.to_string(), "ort");
        let message = "onnxruntime".parse::<BackendKind>().unwrap_err().to_string();
        assert!(message.contains("'onnxruntime'") && message.contains("tract, ort"), "{message}");
        assert_eq!(serde_json::from_str::<BackendKind>("\"ort\"").unwrap(), BackendKind::Ort);
        assert_eq!(serde_json::to_string(&BackendKind::Tract).unwrap(), "\"tract\"");
    }

    #[test]
    fn device_parses_and_prints() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let message = bad.parse::<Device>().unwrap_err().to_string();
            assert!(message.contains(&format!("'{bad}'")) && message.contains("cpu, cuda, cuda:N"), "{message}");
        }
        assert_eq!(serde_json::from_str::<Device>("\"cuda:3\"").unwrap(), Device::Cuda(3));
        assert!(serde_json::from_str::<Device>("\"tpu\"").unwrap_err().to_string().contains("'tpu'"));
    }

    #[test]
    fn backend_options_default_to_tract_on_cpu() {
        let options: BackendOptions = serde_json::from_str("{\"device\": \"cuda\"}").unwrap();
        assert_eq!(options, BackendOptions { device: Device::Cuda(0), ..BackendOptions::default() });
        assert_eq!(BackendOptions::default().kind, BackendKind::Tract);
        assert_eq!(BackendOptions::default().device, Device::Cpu);
    }

    fn signature() -> Signature {
        Signature { inputs: vec!["x".into(), "flag".into()], has_default: vec![false, true], outputs: vec!["y".into()] }
    }

    #[test]
    fn backend_signature_binds_names_to_positions() {
        let t = Tensor::F32(ndarray::ArrayD::zeros(vec![1]));
        assert_eq!(signature().bind(&[("flag", &t), ("x", &t)]).unwrap(), vec![1, 0]);
        assert_eq!(signature().bind(&[("x", &t)]).unwrap(), vec![0]);
        let unknown = signature().bind(&[("x", &t), ("z", &t)]).unwrap_err().to_string();
        assert!(unknown.contains("'z'") && unknown.contains("x, flag"), "{unknown}");
        let missing = signature().bind(&[("flag", &t)]).unwrap_err().to_string();
        assert!(missing.contains("'x'") && missing.contains("required"), "{missing}");
        let twice = signature().bind(&[("x", &t), ("x", &t)]).unwrap_err().to_string();
        assert!(twice.contains("twice"), "{twice}");
    }

    #[test]
    fn backend_rejects_garbage_and_cuda_on_tract() {
        let garbage = open_session(b"\xff\xff\xff", &BackendOptions::default()).err().unwrap();
        assert!(matches!(garbage, Error::InvalidGraph(_)), "{garbage}");
        let options = BackendOptions { device: Device::Cuda(0), ..BackendOptions::default() };
        let cuda = open_session(&[], &options).err().unwrap().to_string();
        assert!(cuda.contains("CPU only"), "{cuda}");
    }
}
