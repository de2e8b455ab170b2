//! Sliding-window operators (Conv and the pools) and the global pools: the batch, the channels
//! (one per filter for a Conv), and spatial sizes from the window geometry.

use super::{with_extra, Dim, Fact, Node, Registry, Symbols, INT64};
use crate::analysis::geometry::Window;
use crate::onnx::graph::attr_ints;

pub(super) fn register(registry: &mut Registry) {
    registry.insert(&["Conv", "AveragePool", "LpPool"], sliding);
    registry.insert(&["MaxPool"], max_pool);
    registry.insert(&["GlobalAveragePool", "GlobalMaxPool"], global);
}

fn sliding(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let conv = node.op == "Conv";
    let weight = node.shape(1).filter(|_| conv);
    let kernel = match attr_ints(node.proto, "kernel_shape") {
        [] if conv => weight.and_then(|w| w.get(2..)).and_then(|k| k.iter().map(Dim::value).collect::<Option<Vec<_>>>()),
        kernel => Some(kernel.to_vec()),
    };
    let shape = match node.shape(0) {
        Some([batch, channels, spatial @ ..]) => {
            let sizes: Option<Vec<i64>> = spatial.iter().map(Dim::value).collect();
            let window = sizes.zip(kernel).and_then(|(s, k)| Window::new(node.proto, &s, &k).ok());
            // A pool keeps the channels; a Conv has one per filter, unknown without its weight.
            let channels = match weight.and_then(|w| w.first()) {
                Some(filters) => filters.clone(),
                None if conv => symbols.fresh(),
                None => channels.clone(),
            };
            let mut dims = vec![batch.clone(), channels];
            for axis in 0..spatial.len() {
                let size = window.as_ref().and_then(|w| w.output.get(axis)).map(|&o| Dim::known(o));
                dims.push(size.unwrap_or_else(|| symbols.fresh()));
            }
            Some(dims)
        }
        _ => None,
    };
    vec![Fact::of(node.dtype(0), shape)]
}

/// A pool, with the indices of the maxima as its second output.
fn max_pool(node: &Node, symbols: &mut Symbols) -> Vec<Fact> {
    let first = sliding(node, symbols).remove(0);
    let indices = Fact::of(INT64, first.shape.clone());
    with_extra(node, first, indices)
}

fn global(node: &Node, _: &mut Symbols) -> Vec<Fact> {
    let shape = node.shape(0).and_then(|s| s.split_first_chunk::<2>()).map(|(batch_and_channels, spatial)| {
        batch_and_channels.iter().cloned().chain(spatial.iter().map(|_| Dim::known(1))).collect()
    });
    vec![Fact::of(node.dtype(0), shape)]
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, fact_of, node};
    use crate::onnx::builder::ints;

    #[test]
    fn windows_give_the_spatial_sizes() {
        let attributes = vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])];
        let mut pool = node("MaxPool", &["x"], attributes);
        pool.output.push("indices".into());
        assert_eq!(dims(&fact_of(&[], &[2, 3, 7, 8], pool)), Some(vec![Some(2), Some(3), Some(4), Some(4)]));
        let global = fact_of(&[], &[2, 3, 7, 8], node("GlobalAveragePool", &["x"], vec![]));
        assert_eq!(dims(&global), Some(vec![Some(2), Some(3), Some(1), Some(1)]));
        // A Conv has one channel per filter of its weight (here the input itself, 2 filters).
        let conv = fact_of(&[], &[2, 3, 7, 8], node("Conv", &["x", "x"], vec![ints("kernel_shape", &[3, 3])]));
        assert_eq!(dims(&conv), Some(vec![Some(2), Some(2), Some(5), Some(6)]));
    }
}
