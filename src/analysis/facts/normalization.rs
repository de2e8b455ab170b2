//! Normalisations (batch, instance, layer, local response) and the softmaxes: the output has the
//! first input's type and shape; the statistics outputs of training-mode forms are left unknown.

use super::elementwise::same_shape;
use super::Registry;

pub(super) fn register(registry: &mut Registry) {
    let normalizing = ["BatchNormalization", "InstanceNormalization", "LayerNormalization", "LRN", "Softmax", "LogSoftmax"];
    registry.insert(&normalizing, same_shape);
}

#[cfg(test)]
mod tests {
    use super::super::testing::{dims, fact_of, node};

    #[test]
    fn the_output_keeps_the_input_shape() {
        let constants: [(&str, &[i64]); 4] = [("s", &[1, 1]), ("b", &[0, 0]), ("m", &[0, 0]), ("v", &[1, 1])];
        let normalized = fact_of(&constants, &[4, 2, 3, 3], node("BatchNormalization", &["x", "s", "b", "m", "v"], vec![]));
        assert_eq!(dims(&normalized), Some(vec![Some(4), Some(2), Some(3), Some(3)]));
        assert!(!normalized.guessed);
        let softmax = fact_of(&[], &[4, 10], node("Softmax", &["x"], vec![]));
        assert_eq!(dims(&softmax), Some(vec![Some(4), Some(10)]));
    }
}
