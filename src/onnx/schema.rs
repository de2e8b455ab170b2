//! The operator schemas of ONNX's default domain (generated into `schema_table.rs` by
//! `scripts/gen-schema-table.py`) and the checks a node must pass against its schema, as
//! `onnx.checker` makes them: the operator exists at the model's opset and is not deprecated there,
//! its input and output counts are in range, required inputs are not left empty, and every
//! attribute is one the operator takes, of the type it takes, required ones present.

use std::sync::OnceLock;

use super::graph::{node_label, FastMap};
use super::proto::{attribute_proto::AttributeType, NodeProto};
use crate::error::{Error, Result};

#[path = "schema_table.rs"]
mod table;

/// An unbounded count of inputs or outputs.
pub(super) const MANY: u32 = u32::MAX;

/// How a formal parameter may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Single,
    Optional,
    Variadic,
}

/// One version of one operator.
#[derive(Debug)]
pub struct OpSchema {
    pub op: &'static str,
    /// The opset version this schema starts at; it holds until the operator's next version.
    pub since: i64,
    pub deprecated: bool,
    pub inputs: (u32, u32),
    pub outputs: (u32, u32),
    /// (name, `AttributeType` code, required).
    pub attributes: &'static [(&'static str, i32, bool)],
    /// Per formal input: (index into `constraints`, option code 0/1/2, homogeneous).
    pub formal_inputs: &'static [(usize, u8, bool)],
    /// Per type constraint: the tensor element types it allows, bit k for `DataType` code k (0:
    /// only non-tensor types, which are not checked).
    pub constraints: &'static [u64],
}

/// A formal input of a schema, for one actual input position.
#[derive(Debug, Clone, Copy)]
pub struct Formal {
    /// Index of the type constraint; inputs sharing it must share an element type.
    pub constraint: usize,
    pub allowed: u64,
    pub presence: Presence,
    /// For a variadic input: whether all its values share one element type.
    pub homogeneous: bool,
}

impl OpSchema {
    /// The formal parameter of actual input `position` (the last formal one, when variadic, takes
    /// every input after it).
    pub fn formal_input(&self, position: usize) -> Option<Formal> {
        let &(constraint, option, homogeneous) = self.formal_inputs.get(position).or_else(|| self.formal_inputs.last().filter(|f| f.1 == 2))?;
        let presence = match option {
            0 => Presence::Single,
            1 => Presence::Optional,
            _ => Presence::Variadic,
        };
        Some(Formal { constraint, allowed: self.constraints.get(constraint).copied().unwrap_or(0), presence, homogeneous })
    }
}

/// The schema of `op` in the default domain at `opset`: its newest version not newer than it.
pub fn lookup(op: &str, opset: i64) -> Option<&'static OpSchema> {
    versions(op).iter().take_while(|s| s.since <= opset).last()
}

/// Every version of `op`, oldest first. Validation looks up each node of every model loaded, so the
/// table is indexed by name once rather than searched by string comparisons each time.
fn versions(op: &str) -> &'static [OpSchema] {
    static BY_NAME: OnceLock<FastMap<&'static str, &'static [OpSchema]>> = OnceLock::new();
    let index = BY_NAME.get_or_init(|| {
        table::SCHEMAS.chunk_by(|a, b| a.op == b.op).filter_map(|versions| Some((versions.first()?.op, versions))).collect()
    });
    index.get(op).copied().unwrap_or_default()
}

/// Checks a default-domain node against its schema at `opset` (see the module documentation).
pub fn check_node(node: &NodeProto, position: usize, opset: i64) -> Result<()> {
    let fail = |message: String| Error::Unsupported { node: node_label(node, position), op_type: node.op_type.clone().unwrap_or_default(), message };
    let op = node.op_type.as_deref().unwrap_or("");
    let schema = lookup(op, opset).ok_or_else(|| fail(format!("'{op}' is not an operator of the default domain at opset {opset}")))?;
    if schema.deprecated {
        return Err(fail(format!("'{op}' is deprecated at opset {opset} (since version {})", schema.since)));
    }
    let bound = |most: u32| if most == MANY { "any number".to_string() } else { most.to_string() };
    for (what, count, (least, most)) in [("inputs", node.input.len(), schema.inputs), ("outputs", node.output.len(), schema.outputs)] {
        if count < least as usize || (most != MANY && count > most as usize) {
            return Err(fail(format!("has {count} {what}; {op}-{} takes {least} to {}", schema.since, bound(most))));
        }
    }
    // A count the schema's range allows but its operator does not: BatchNormalization gives Y
    // alone or all its statistics.
    if op == "BatchNormalization" {
        let allowed = if schema.since < 14 { [1, 5] } else { [1, 3] };
        if !allowed.contains(&node.output.len()) {
            return Err(fail(format!("has {} outputs; {op}-{} gives {} or {}", node.output.len(), schema.since, allowed[0], allowed[1])));
        }
    }
    for (i, input) in node.input.iter().enumerate() {
        if input.is_empty() && schema.formal_input(i).is_some_and(|f| f.presence != Presence::Optional) {
            return Err(fail(format!("input {i} is left empty, which {op}-{} does not allow", schema.since)));
        }
    }
    for attribute in &node.attribute {
        let name = attribute.name.as_deref().unwrap_or("");
        if attribute.ref_attr_name.is_some() {
            continue;
        }
        let Some(&(_, expected, _)) = schema.attributes.iter().find(|a| a.0 == name) else {
            let known: Vec<&str> = schema.attributes.iter().map(|a| a.0).collect();
            let takes = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(fail(format!("attribute '{name}' is not one {op}-{} takes (it takes: {takes})", schema.since)));
        };
        let found = attribute.r#type.unwrap_or(0);
        if found != expected {
            let name_of = |code: i32| AttributeType::try_from(code).map_or_else(|_| code.to_string(), |t| format!("{t:?}"));
            return Err(fail(format!("attribute '{name}' has type {}, {op} takes {}", name_of(found), name_of(expected))));
        }
    }
    if let Some((missing, ..)) = schema.attributes.iter().find(|(name, _, required)| *required && !node.attribute.iter().any(|a| a.name.as_deref() == Some(name))) {
        return Err(fail(format!("the required attribute '{missing}' is missing")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::AttributeProto;

    fn node(op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute: attributes,
            ..Default::default()
        }
    }

    fn ints(name: &str) -> AttributeProto {
        AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: vec![1], ..Default::default() }
    }

    #[test]
    fn the_version_in_force_is_the_newest_not_after_the_opset() {
        assert_eq!(lookup("Squeeze", 12).map(|s| s.since), Some(11));
        assert_eq!(lookup("Squeeze", 13).map(|s| s.since), Some(13));
        assert!(lookup("Gelu", 19).is_none());
        assert!(lookup("Upsample", 10).is_some_and(|s| s.deprecated));
        let conv = lookup("Conv", 17).unwrap();
        // X, W and B share T, which allows float but not int64.
        let (x, b) = (conv.formal_input(0).unwrap(), conv.formal_input(2).unwrap());
        assert_eq!((x.constraint, b.presence), (b.constraint, Presence::Optional));
        assert!(x.allowed & (1 << 1) != 0 && x.allowed & (1 << 7) == 0);
        assert_eq!(lookup("Concat", 13).unwrap().formal_input(5).map(|f| f.presence), Some(Presence::Variadic));
    }

    #[test]
    fn attributes_and_arity_follow_the_schema_of_the_opset() {
        let check = |n: &NodeProto, opset| check_node(n, 3, opset).map_err(|e| e.to_string());
        assert!(check(&node("Squeeze", &["x"], vec![ints("axes")]), 11).is_ok());
        let message = check(&node("Squeeze", &["x"], vec![ints("axes")]), 13).unwrap_err();
        assert!(message.contains("attribute 'axes' is not one Squeeze-13 takes"), "{message}");
        assert!(check(&node("Unsqueeze", &["x"], vec![]), 13).unwrap_err().contains("has 1 inputs; Unsqueeze-13 takes 2 to 2"));
        let string_trans = AttributeProto { name: Some("transB".into()), r#type: Some(AttributeType::String as i32), s: Some(b"3".to_vec()), ..Default::default() };
        assert!(check(&node("Gemm", &["a", "b"], vec![string_trans]), 13).unwrap_err().contains("type String, Gemm takes Int"));
        assert!(check(&node("Cast", &["x"], vec![]), 13).unwrap_err().contains("required attribute 'to'"));
        assert!(check(&node("Conv", &["x", ""], vec![]), 13).unwrap_err().contains("input 1 is left empty"));
        assert!(check(&node("Conv", &["x", "w", ""], vec![]), 13).is_ok());
        assert!(check(&node("Frobnicate", &["x"], vec![]), 13).unwrap_err().contains("not an operator"));
        assert!(check(&node("Upsample", &["x", "s"], vec![]), 10).unwrap_err().contains("deprecated"));
    }
}
