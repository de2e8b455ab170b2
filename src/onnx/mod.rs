//! ONNX models: the protobuf types, loading and saving, tensors and the graph layer.

pub mod builder;
pub mod graph;
pub mod io;
pub mod schema;
pub mod tensor;
pub mod validate;

/// The ONNX IR as compiled by prost from `proto/onnx.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use graph::{GraphIndex, NameGen};
pub use io::{load_model, save_model, SaveOptions};

/// The opset version of the default ONNX domain that `model` imports (0 when none is declared).
pub fn default_opset(model: &proto::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(0)
}

/// The value of metadata property `key`, if present.
pub fn metadata<'m>(model: &'m proto::ModelProto, key: &str) -> Option<&'m str> {
    model.metadata_props.iter().find(|p| p.key.as_deref() == Some(key)).and_then(|p| p.value.as_deref())
}
