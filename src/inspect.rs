//! `inspect`: what a model is made of — its interface, convolutions, parameters and any DeepPatch
//! metadata.

use std::fmt::Write;

use serde::Serialize;

use crate::analysis::{convolutions, parameter_count, ConvInfo};
use crate::error::Result;
use crate::onnx::proto::{tensor_shape_proto::dimension::Value as DimValue, type_proto, ModelProto, ValueInfoProto};
use crate::units::target::{form_of, Form, TARGET_KEY};

/// A model input or output: name, element type and shape (symbolic dimensions by name).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Port {
    pub name: String,
    pub element_type: String,
    pub shape: Vec<String>,
}

/// Everything `inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub ir_version: i64,
    pub opsets: Vec<(String, i64)>,
    pub producer: String,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub nodes: usize,
    pub convolutions: Vec<ConvInfo>,
    pub filters: usize,
    pub conv_parameters: usize,
    pub parameters: usize,
    /// Metadata properties written by onnx-deeppatch (keys starting with `deeppatch`).
    pub deeppatch: Vec<(String, String)>,
    /// The routing form of a γ-patched model (None for other models or an unknown form).
    pub form: Option<Form>,
}

/// Describes `model`.
pub fn inspect(model: &ModelProto) -> Result<Inspection> {
    let graph = model.graph.clone().unwrap_or_default();
    let initialized: std::collections::HashSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let convs = convolutions(model)?;
    Ok(Inspection {
        ir_version: model.ir_version.unwrap_or(0),
        opsets: model.opset_import.iter().map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0))).collect(),
        producer: format!("{} {}", model.producer_name.as_deref().unwrap_or(""), model.producer_version.as_deref().unwrap_or("")).trim().to_string(),
        inputs: graph.input.iter().filter(|v| !initialized.contains(v.name.as_deref().unwrap_or(""))).map(port).collect(),
        outputs: graph.output.iter().map(port).collect(),
        nodes: graph.node.len(),
        filters: convs.iter().map(|c| c.filters).sum(),
        conv_parameters: convs.iter().map(|c| c.parameters).sum(),
        convolutions: convs,
        parameters: parameter_count(model),
        deeppatch: model
            .metadata_props
            .iter()
            .filter_map(|p| Some((p.key.clone()?, p.value.clone().unwrap_or_default())))
            .filter(|(k, _)| k.starts_with("deeppatch"))
            .collect(),
        form: crate::units::strip::is_patched(model).then(|| form_of(model).ok()).flatten(),
    })
}

fn port(value: &ValueInfoProto) -> Port {
    let (element_type, shape) = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => (
            element_name(t.elem_type.unwrap_or(0)),
            t.shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DimValue::DimValue(v)) => v.to_string(),
                            Some(DimValue::DimParam(p)) => p.clone(),
                            None => "?".into(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ("non-tensor".to_string(), Vec::new()),
    };
    Port { name: value.name.clone().unwrap_or_default(), element_type, shape }
}

fn element_name(code: i32) -> String {
    use crate::onnx::proto::tensor_proto::DataType;
    DataType::try_from(code).map(|t| t.as_str_name().to_lowercase()).unwrap_or_else(|_| format!("type {code}"))
}

impl Inspection {
    /// The human-readable form.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{}:{v}", if d.is_empty() { "ai.onnx" } else { d })).collect();
        let _ = writeln!(out, "IR version {}, opsets {}, producer {}", self.ir_version, opsets.join(", "), self.producer);
        for (title, ports) in [("input", &self.inputs), ("output", &self.outputs)] {
            for p in ports {
                let _ = writeln!(out, "{title:<7} {} {} [{}]", p.name, p.element_type, p.shape.join(", "));
            }
        }
        let _ = writeln!(out, "{} nodes, {} parameters", self.nodes, self.parameters);
        let _ = writeln!(out, "\n{} convolutions, {} filters, {} parameters:", self.convolutions.len(), self.filters, self.conv_parameters);
        let width = self.convolutions.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
        let _ = writeln!(out, "  {:<width$}  {:>7}  {:>7}  {:>5}  {:>4}  {:>8}", "name", "filters", "kernel", "group", "bias", "params");
        for c in &self.convolutions {
            let kernel: Vec<String> = c.kernel.iter().map(|k| k.to_string()).collect();
            let _ = writeln!(
                out,
                "  {:<width$}  {:>7}  {:>7}  {:>5}  {:>4}  {:>8}{}",
                c.name,
                c.filters,
                kernel.join("x"),
                c.group,
                if c.has_bias { "yes" } else { "no" },
                c.parameters,
                if c.constant { "" } else { "  (weights not constant: not patchable)" }
            );
        }
        let meta = |key: &str| self.deeppatch.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        match meta("deeppatch.blamed").and_then(|b| serde_json::from_str::<std::collections::BTreeMap<String, Vec<usize>>>(b).ok()) {
            None => {
                let _ = writeln!(out, "\nno DeepPatch units");
            }
            Some(blamed) => {
                let _ = writeln!(
                    out,
                    "\nDeepPatch units (κ = {}): boundary {} ({}), decision {}",
                    meta("deeppatch.kappa").unwrap_or("?"),
                    meta("deeppatch.boundary").unwrap_or("?"),
                    match meta("deeppatch.direction") {
                        Some("below") => "adapt when CR < boundary",
                        Some("above") => "adapt when CR > boundary",
                        _ => "?",
                    },
                    meta("deeppatch.decision").unwrap_or("?"),
                );
                for c in &self.convolutions {
                    if let Some(channels) = blamed.get(&c.name) {
                        let _ = writeln!(out, "  {:<width$}  {} of {} filters replaced", c.name, channels.len(), c.filters);
                    }
                }
                let _ = match self.form {
                    Some(form) => writeln!(out, "routing: {} form (target {}), runs on {}", form.name(), meta(TARGET_KEY).unwrap_or("ort"), form.runtimes()),
                    None => writeln!(out, "routing: unknown form '{}'", meta(crate::units::target::FORM_KEY).unwrap_or("?")),
                };
                let _ = writeln!(out, "metadata:");
                for (k, v) in self.deeppatch.iter().filter(|(k, _)| k != "deeppatch.layout") {
                    let _ = writeln!(out, "  {k}: {v}");
                }
            }
        }
        out
    }
}
