//! Which runtime a γ model is built for, and the routing form that serves it (docs/deploy.md).
//!
//! The runtimes' control flow differs: tract has `Scan` and `If` but no `Loop`; OpenVINO's ONNX
//! importer has `Loop` and `If` but no `Scan`; onnxruntime and the ONNX reference evaluator have
//! all three. No per-sample form thus serves both tract and OpenVINO, so the form is chosen per
//! target.

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::onnx::metadata;
use crate::onnx::proto::ModelProto;
use super::spec::PatchSpec;

/// Metadata keys recording the target a γ model was built for and its routing form.
pub const TARGET_KEY: &str = "deeppatch.target";
pub const FORM_KEY: &str = "deeppatch.form";

/// The runtime a γ model is meant for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// onnxruntime (CPU and CUDA): the per-sample Scan, also run by tract and onnx.reference.
    #[default]
    Ort,
    /// tract: the per-sample Scan.
    Tract,
    /// OpenVINO: a Loop over the adapted samples, also run by onnxruntime and onnx.reference.
    Openvino,
    /// Every runtime: the adapted path over the whole batch, rows chosen per sample.
    Portable,
}

/// How the then branch of the routing `If` runs the adapted samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// A `Scan` over the batch whose body is an `If` on the sample's flag.
    Scan,
    /// A `Loop` over the adapted samples' rows, each run alone and written into the original
    /// outputs with `ScatterND`.
    Loop,
    /// The adapted copy over the whole batch, its rows chosen with `Where`: no loop at all, but an
    /// adapted sample's output may then depend on the batch size in its last bits.
    Batch,
}

impl Target {
    /// The name used on the command line and in metadata.
    pub fn name(self) -> &'static str {
        match self {
            Target::Ort => "ort",
            Target::Tract => "tract",
            Target::Openvino => "openvino",
            Target::Portable => "portable",
        }
    }

    pub fn form(self) -> Form {
        match self {
            Target::Ort | Target::Tract => Form::Scan,
            Target::Openvino => Form::Loop,
            Target::Portable => Form::Batch,
        }
    }

    fn parse(name: &str) -> Option<Target> {
        [Target::Ort, Target::Tract, Target::Openvino, Target::Portable].into_iter().find(|t| t.name() == name)
    }
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Scan => "scan",
            Form::Loop => "loop",
            Form::Batch => "batch",
        }
    }

    /// The runtimes measured to load and run this form (docs/deploy.md has the figures).
    pub fn runtimes(self) -> &'static str {
        match self {
            Form::Scan => "onnxruntime, tract, onnx.reference",
            Form::Loop => "onnxruntime, OpenVINO, onnx.reference",
            Form::Batch => "onnxruntime, tract, OpenVINO, onnx.reference",
        }
    }

    /// Whether the tool's backend `kind` runs this form (tract has no `Loop`).
    pub fn runs_on(self, kind: BackendKind) -> bool {
        !(self == Form::Loop && kind == BackendKind::Tract)
    }

    fn parse(name: &str) -> Option<Form> {
        [Form::Scan, Form::Loop, Form::Batch].into_iter().find(|f| f.name() == name)
    }
}

/// The refusal of a backend that cannot run `target`'s form.
pub fn check_backend(target: Target, kind: BackendKind) -> Result<()> {
    if target.form().runs_on(kind) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "target {} builds the {} form, which the {} backend cannot run (it runs on {}); choose backend ort",
        target.name(),
        target.form().name(),
        kind.name(),
        target.form().runtimes()
    )))
}

/// The routing form of a γ-patched model, from its metadata: files written before targets existed
/// carry none and use the Scan form.
pub fn form_of(model: &ModelProto) -> Result<Form> {
    match metadata(model, FORM_KEY) {
        None => Ok(Form::Scan),
        Some(name) => Form::parse(name).ok_or_else(|| Error::InvalidGraph(format!("metadata '{FORM_KEY}': unknown routing form '{name}'"))),
    }
}

/// The spec metadata entry in which `calibrate` records the target it served.
pub const SPEC_TARGET_KEY: &str = "target";

/// The target to build `spec` for: `explicit` when given, else the one the spec records, else the
/// default.
pub fn resolve(explicit: Option<Target>, spec: &PatchSpec) -> Result<Target> {
    if let Some(target) = explicit {
        return Ok(target);
    }
    match spec.metadata.get(SPEC_TARGET_KEY) {
        None => Ok(Target::default()),
        Some(name) => Target::parse(name).ok_or_else(|| Error::Config(format!("spec metadata '{SPEC_TARGET_KEY}': unknown target '{name}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_names_a_form_that_parses_back() {
        for target in [Target::Ort, Target::Tract, Target::Openvino, Target::Portable] {
            assert_eq!(Target::parse(target.name()), Some(target));
            assert_eq!(Form::parse(target.form().name()), Some(target.form()));
        }
        assert_eq!(Target::Openvino.form(), Form::Loop);
        assert!(check_backend(Target::Openvino, BackendKind::Tract).unwrap_err().to_string().contains("choose backend ort"));
        assert!(check_backend(Target::Portable, BackendKind::Tract).is_ok());
    }

    #[test]
    fn the_explicit_target_wins_over_the_recorded_one() {
        let mut spec = PatchSpec { format: 1, model_sha256: None, kappa: 0.25, layers: vec![], decision: crate::units::Decision::adapt_all(), metadata: Default::default() };
        assert_eq!(resolve(None, &spec).unwrap(), Target::Ort);
        spec.metadata.insert(SPEC_TARGET_KEY.into(), "openvino".into());
        assert_eq!(resolve(None, &spec).unwrap(), Target::Openvino);
        assert_eq!(resolve(Some(Target::Tract), &spec).unwrap(), Target::Tract);
        spec.metadata.insert(SPEC_TARGET_KEY.into(), "tensorrt".into());
        assert!(resolve(None, &spec).unwrap_err().to_string().contains("unknown target 'tensorrt'"));
    }
}
