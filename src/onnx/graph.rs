//! The graph layer over the protobuf: producers and consumers of every value, a topological order,
//! constant lookup and collision-free name generation.

use std::collections::{HashMap, HashSet};

/// Maps and sets keyed by value names. Indices are rebuilt for every graph the tool reads or
/// writes, and foldhash (randomly seeded) hashes short names several times faster than the
/// standard SipHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Whether `node` is an operator of the default ONNX domain ('' or its alias 'ai.onnx'): a node of
/// another domain only shares an op type's name, not its meaning.
pub fn in_default_domain(node: &NodeProto) -> bool {
    node.domain.as_deref().is_none_or(|d| d.is_empty() || d == "ai.onnx")
}

use smallvec::SmallVec;

use super::proto::{GraphProto, NodeProto, TensorProto};
use crate::error::{Error, Result};

/// Node positions: the readers of one value, or the producers one node reads from. Most have one
/// or two, so they live inline.
type Positions = SmallVec<[usize; 2]>;

/// Read-only indices over one graph. Node positions refer to `graph.node`.
pub struct GraphIndex<'g> {
    graph: &'g GraphProto,
    producer: FastMap<&'g str, usize>,
    consumers: FastMap<&'g str, Positions>,
    initializers: FastMap<&'g str, &'g TensorProto>,
    inputs: FastSet<&'g str>,
    order: Vec<usize>,
}

impl<'g> GraphIndex<'g> {
    /// Indexes `graph`: every value has at most one producer, every input is defined, no cycle.
    pub fn new(graph: &'g GraphProto) -> Result<Self> {
        Self::with_outer_scope(graph, &HashSet::new())
    }

    /// Indexes a subgraph that may read the values named in `outer` from its enclosing graph.
    pub fn with_outer_scope(graph: &'g GraphProto, outer: &HashSet<String>) -> Result<Self> {
        let hasher = foldhash::fast::RandomState::default;
        let mut initializers: FastMap<&str, &TensorProto> = FastMap::with_capacity_and_hasher(graph.initializer.len(), hasher());
        initializers.extend(graph.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t))));
        let inputs: FastSet<&str> = graph.input.iter().filter_map(|v| v.name.as_deref()).collect();
        let mut defined: FastSet<&str> = FastSet::with_capacity_and_hasher(initializers.len() + inputs.len(), hasher());
        defined.extend(initializers.keys().copied());
        defined.extend(inputs.iter().copied());
        defined.extend(graph.sparse_initializer.iter().filter_map(|s| s.values.as_ref()?.name.as_deref()));

        let outputs = graph.node.iter().map(|n| n.output.len()).sum();
        let mut producer = FastMap::with_capacity_and_hasher(outputs, hasher());
        for (position, node) in graph.node.iter().enumerate() {
            for output in node.output.iter().filter(|o| !o.is_empty()) {
                if producer.insert(output.as_str(), position).is_some() || defined.contains(output.as_str()) {
                    return Err(Error::InvalidGraph(format!(
                        "value '{output}' is produced twice (second time by node '{}')",
                        node_label(node, position)
                    )));
                }
            }
        }
        let mut consumers: FastMap<&str, Positions> = FastMap::with_capacity_and_hasher(defined.len() + outputs, hasher());
        let mut sources = Vec::with_capacity(graph.node.len());
        for (position, node) in graph.node.iter().enumerate() {
            let mut from: Positions = SmallVec::new();
            for input in node_reads(node) {
                let produced = producer.get(input).copied();
                if !(produced.is_some() || defined.contains(input) || outer.contains(input)) {
                    return Err(Error::InvalidGraph(format!(
                        "node '{}' reads '{input}', which nothing defines",
                        node_label(node, position)
                    )));
                }
                consumers.entry(input).or_default().push(position);
                from.extend(produced);
            }
            from.sort_unstable();
            from.dedup();
            sources.push(from);
        }
        for output in &graph.output {
            let name = output.name.as_deref().unwrap_or("");
            if !(defined.contains(name) || producer.contains_key(name) || outer.contains(name)) {
                return Err(Error::InvalidGraph(format!("graph output '{name}' is not computed by any node")));
            }
        }
        let order = topological_order(graph, &sources)?;
        Ok(GraphIndex { graph, producer, consumers, initializers, inputs, order })
    }

    /// The indexed graph.
    pub fn graph(&self) -> &'g GraphProto {
        self.graph
    }

    /// Node positions in an order where every node follows the producers of its inputs.
    pub fn topological_order(&self) -> &[usize] {
        &self.order
    }

    /// The node that computes `value`, if a node does.
    pub fn producer(&self, value: &str) -> Option<(usize, &'g NodeProto)> {
        self.producer.get(value).map(|&p| (p, &self.graph.node[p]))
    }

    /// The nodes that read `value` (directly or from inside a subgraph), in graph order.
    pub fn consumers(&self, value: &str) -> impl Iterator<Item = (usize, &'g NodeProto)> + '_ {
        self.consumers.get(value).into_iter().flatten().map(|&p| (p, &self.graph.node[p]))
    }

    /// The initializer named `name`.
    pub fn initializer(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializers.get(name).copied()
    }

    /// The constant tensor behind `value`: an initializer that is not a graph input (which a caller
    /// could override), the output of a `Constant` node with a `value` attribute, or an `Identity`
    /// of either.
    pub fn constant(&self, value: &str) -> Option<&'g TensorProto> {
        if let Some(t) = self.initializer(value).filter(|_| !self.is_graph_input(value)) {
            return Some(t);
        }
        let (_, node) = self.producer(value)?;
        match node.op_type.as_deref().filter(|_| in_default_domain(node))? {
            "Constant" => node.attribute.iter().find(|a| a.name.as_deref() == Some("value"))?.t.as_ref(),
            // Exporters that de-duplicate equal parameters put the shared one behind Identity
            // nodes (the graph is acyclic, so the chain ends).
            "Identity" => self.constant(node.input.first()?),
            _ => None,
        }
    }

    /// Whether `value` is an input of the graph that has no default initializer.
    pub fn is_runtime_input(&self, value: &str) -> bool {
        self.is_graph_input(value) && !self.initializers.contains_key(value)
    }

    /// Whether `value` is an input of the graph (an initializer of that name is only its default).
    pub fn is_graph_input(&self, value: &str) -> bool {
        self.inputs.contains(value)
    }
}

/// Reorders `graph.node` so that every node follows the producers of its inputs (keeping the
/// file's order where it already does): rewrites append nodes that may read values a later node
/// of the original computes (a weight from a `Constant` node).
pub fn sort_topologically(graph: &mut GraphProto) -> Result<()> {
    let order = GraphIndex::new(graph)?.topological_order().to_vec();
    let mut nodes: Vec<Option<NodeProto>> = std::mem::take(&mut graph.node).into_iter().map(Some).collect();
    graph.node = order.into_iter().filter_map(|p| nodes[p].take()).collect();
    Ok(())
}

/// The last dimension of a tensor value's declared shape, when it is a positive number (the class
/// count of a [N, C] logits output).
pub fn static_last_dim(value: &super::proto::ValueInfoProto) -> Option<usize> {
    use super::proto::{tensor_shape_proto::dimension::Value, type_proto::Value as Type};
    let Some(Type::TensorType(tensor)) = value.r#type.as_ref()?.value.as_ref() else { return None };
    match tensor.shape.as_ref()?.dim.last()?.value.as_ref()? {
        Value::DimValue(d) if *d > 0 => usize::try_from(*d).ok(),
        _ => None,
    }
}

/// A readable label for a node: its name, else its op type and position.
pub fn node_label(node: &NodeProto, position: usize) -> String {
    match node.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("{}#{position}", node.op_type.as_deref().unwrap_or("?")),
    }
}

/// The attribute `name` of `node`.
pub fn attribute<'n>(node: &'n NodeProto, name: &str) -> Option<&'n super::proto::AttributeProto> {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

/// The integer attribute `name`, or `default`.
pub fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).and_then(|a| a.i).unwrap_or(default)
}

/// The integer-list attribute `name` (empty when absent).
pub fn attr_ints<'n>(node: &'n NodeProto, name: &str) -> &'n [i64] {
    attribute(node, name).map(|a| a.ints.as_slice()).unwrap_or(&[])
}

/// A copy of `node` with values renamed by `names` (inputs, outputs and reads inside subgraphs).
pub fn renamed_values(node: &NodeProto, names: &HashMap<String, String>) -> NodeProto {
    let mut copy = node.clone();
    for value in copy.input.iter_mut().chain(copy.output.iter_mut()) {
        if let Some(new) = names.get(value.as_str()) {
            *value = new.clone();
        }
    }
    for attribute in &mut copy.attribute {
        for subgraph in attribute.g.iter_mut().chain(attribute.graphs.iter_mut()) {
            subgraph.node = subgraph.node.iter().map(|n| renamed_values(n, names)).collect();
        }
    }
    copy
}

/// Every value a node reads: its inputs and the outer-scope values its subgraphs use.
fn node_reads(node: &NodeProto) -> SmallVec<[&str; 4]> {
    let mut reads: SmallVec<[&str; 4]> = node.input.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    for attribute in &node.attribute {
        for subgraph in attribute.g.iter().chain(attribute.graphs.iter()) {
            reads.extend(outer_reads(subgraph));
        }
    }
    reads.sort_unstable();
    reads.dedup();
    reads
}

/// Values a subgraph reads without defining them itself.
fn outer_reads(graph: &GraphProto) -> Vec<&str> {
    let mut defined: FastSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    defined.extend(graph.input.iter().filter_map(|v| v.name.as_deref()));
    defined.extend(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
    let mut reads: Vec<&str> = graph.node.iter().flat_map(node_reads).filter(|n| !defined.contains(n)).collect();
    reads.extend(graph.output.iter().filter_map(|o| o.name.as_deref()).filter(|n| !defined.contains(n)));
    reads
}

/// Kahn's algorithm, keeping the file's order among ready nodes; a leftover node is on a cycle.
fn topological_order(graph: &GraphProto, sources: &[Positions]) -> Result<Vec<usize>> {
    let count = graph.node.len();
    let mut pending: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    let mut dependents: Vec<Positions> = vec![SmallVec::new(); count];
    for (position, from) in sources.iter().enumerate() {
        for &source in from {
            dependents[source].push(position);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..count).filter(|&p| pending[p] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(position) = ready.pop_first() {
        order.push(position);
        for &next in &dependents[position] {
            pending[next] -= 1;
            if pending[next] == 0 {
                ready.insert(next);
            }
        }
    }
    if order.len() < count {
        let stuck = (0..count).find(|&p| pending[p] > 0).unwrap_or(0);
        return Err(Error::InvalidGraph(format!(
            "the graph has a cycle through node '{}'",
            node_label(&graph.node[stuck], stuck)
        )));
    }
    Ok(order)
}

/// Generates value and node names that collide with nothing in the model, under a fixed prefix.
pub struct NameGen {
    prefix: String,
    used: HashSet<String>,
}

impl NameGen {
    /// Collects every name of `graph` (nodes, values, initializers, subgraphs included).
    pub fn new(graph: &GraphProto, prefix: &str) -> Self {
        let mut used = HashSet::new();
        collect_names(graph, &mut used);
        NameGen { prefix: prefix.to_string(), used }
    }

    /// Marks `names` as taken (names the caller will use verbatim).
    pub fn reserve(&mut self, names: &[&str]) {
        self.used.extend(names.iter().map(|n| n.to_string()));
    }

    /// A fresh name `<prefix><base>`, suffixed with a counter if that is taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut candidate = format!("{}{base}", self.prefix);
        let mut counter = 1;
        while self.used.contains(&candidate) {
            candidate = format!("{}{base}_{counter}", self.prefix);
            counter += 1;
        }
        self.used.insert(candidate.clone());
        candidate
    }
}

fn collect_names(graph: &GraphProto, used: &mut HashSet<String>) {
    let values = graph.input.iter().chain(&graph.output).chain(&graph.value_info).filter_map(|v| v.name.clone());
    used.extend(values);
    used.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
    for node in &graph.node {
        used.extend(node.name.clone());
        used.extend(node.input.iter().chain(&node.output).cloned());
        for attribute in &node.attribute {
            for subgraph in attribute.g.iter().chain(attribute.graphs.iter()) {
                collect_names(subgraph, used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::ValueInfoProto;

    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn value(name: &str) -> ValueInfoProto {
        ValueInfoProto { name: Some(name.into()), ..Default::default() }
    }

    #[test]
    fn orders_nodes_listed_out_of_order() {
        let graph = GraphProto {
            node: vec![node("b", "Relu", &["t"], &["y"]), node("a", "Relu", &["x"], &["t"])],
            input: vec![value("x")],
            output: vec![value("y")],
            ..Default::default()
        };
        let index = GraphIndex::new(&graph).unwrap();
        assert_eq!(index.topological_order(), &[1, 0]);
        assert_eq!(index.producer("t").map(|(p, _)| p), Some(1));
        assert_eq!(index.consumers("t").map(|(p, _)| p).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn constants_are_found_behind_identity_chains() {
        let graph = GraphProto {
            node: vec![node("i1", "Identity", &["w"], &["w1"]), node("i2", "Identity", &["w1"], &["w2"]), node("r", "Relu", &["x"], &["y"])],
            input: vec![value("x")],
            initializer: vec![crate::onnx::tensor::from_i64("w", &[2], &[4, 5])],
            ..Default::default()
        };
        let index = GraphIndex::new(&graph).unwrap();
        assert_eq!(index.constant("w2").and_then(|t| t.name.as_deref()), Some("w"));
        assert!(index.constant("y").is_none());
    }

    #[test]
    fn detects_cycles_and_undefined_inputs() {
        let cyclic = GraphProto {
            node: vec![node("a", "Add", &["x", "u"], &["t"]), node("b", "Relu", &["t"], &["u"])],
            input: vec![value("x")],
            output: vec![value("u")],
            ..Default::default()
        };
        let message = GraphIndex::new(&cyclic).err().unwrap().to_string();
        assert!(message.contains("cycle"), "{message}");
        let dangling = GraphProto { node: vec![node("a", "Relu", &["nowhere"], &["y"])], output: vec![value("y")], ..Default::default() };
        assert!(GraphIndex::new(&dangling).err().unwrap().to_string().contains("nowhere"));
    }

    #[test]
    fn fresh_names_avoid_collisions() {
        let graph = GraphProto {
            node: vec![node("deeppatch/x", "Relu", &["in"], &["deeppatch/x_1"])],
            input: vec![value("in")],
            output: vec![value("deeppatch/x_1")],
            ..Default::default()
        };
        let mut names = NameGen::new(&graph, "deeppatch/");
        assert_eq!(names.fresh("x"), "deeppatch/x_2");
        assert_eq!(names.fresh("x"), "deeppatch/x_3");
        assert_eq!(names.fresh("y"), "deeppatch/y");
    }
}
