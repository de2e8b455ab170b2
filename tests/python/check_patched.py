"""Independent checks of a γ-patched model with onnxruntime (Python) and onnx:

  check_patched.py ORIGINAL ALL NONE MIXED SPEC_JSON BATCH_NPY

ALL adapts every sample, NONE none, MIXED has its boundary at the median CR of the first 64 images
of BATCH_NPY (same spec otherwise). Checks:
- onnx.checker.check_model(full_check=True) accepts both files;
- with deeppatch_decision = False, and with the adapt-none boundary, outputs are bit-identical to the
  original model's (batches 1, 7, 64);
- the adapt-all model equals a copy of the original whose blamed kernels (and biases) were
  overwritten with the replacement ones (max abs diff <= 1e-5);
- a mixed batch (boundary at the median CR) gives every sample exactly its output when run alone.
Prints one line per check and "all checks passed".
"""
import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort

original_path, all_path, none_path, mixed_path, spec_path, batch_path = sys.argv[1:7]
batch = np.load(batch_path)


def session(model):
    data = model if isinstance(model, bytes) else open(model, "rb").read()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run(sess, x, decision=None, outputs=("logits",)):
    feed = {sess.get_inputs()[0].name: x}
    if decision is not None:
        feed["deeppatch_decision"] = np.array(decision)
    return sess.run(list(outputs), feed)


original = onnx.load(original_path)
output_name = original.graph.output[0].name
input_name = original.graph.input[0].name
for path in (all_path, none_path, mixed_path):
    onnx.checker.check_model(onnx.load(path), full_check=True)
print("checker: full_check passed")

s_orig, s_all, s_none = session(original_path), session(all_path), session(none_path)
x = batch[:64]
for n in (1, 7, 64):
    want = run(s_orig, x[:n], outputs=(output_name,))[0]
    for label, sess, decision in (("decision=False", s_all, False), ("adapt-none", s_none, None)):
        got = run(sess, x[:n], decision, outputs=(output_name,))[0]
        if not np.array_equal(want, got):
            sys.exit(f"{label}, batch {n}: not bit-identical (max diff {np.abs(want - got).max()})")
print("fallback: bit-identical at batches 1, 7, 64")

# The reference for adapt-all: the original with blamed kernels overwritten.
spec = json.load(open(spec_path))
arrays = np.load(spec_path.rsplit(".", 1)[0] + ".npz")
copy = onnx.load(original_path)
initializers = {t.name: t for t in copy.graph.initializer}
nodes = {n.name: n for n in copy.graph.node}
for i, layer in enumerate(spec["layers"]):
    node = nodes.get(layer["conv"]) or next(n for n in copy.graph.node if n.output[0] == layer["conv"])
    for slot, key in ((1, f"layer{i}.weight"), (2, f"layer{i}.bias")):
        if key not in arrays.files:
            continue
        tensor = initializers[node.input[slot]]
        values = numpy_helper.to_array(tensor).copy()
        values[layer["blamed"]] = arrays[key]
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
s_copy = session(copy.SerializeToString())
want = run(s_copy, x, outputs=(output_name,))[0]
got, adapted = run(s_all, x, True, outputs=(output_name, "deeppatch_adapted"))
if not adapted.all():
    sys.exit("adapt-all left samples unadapted")
diff = np.abs(want - got).max()
if diff > 1e-5:
    sys.exit(f"adapt-all differs from the overwritten copy by {diff}")
print(f"adapt-all: equals the overwritten copy (max abs diff {diff:.2e})")

# A mixed batch: MIXED has its boundary at the median CR of this batch.
s_mixed = session(mixed_path)
together, adapted = run(s_mixed, x, True, outputs=(output_name, "deeppatch_adapted"))
share = adapted.mean()
if not 0 < share < 1:
    sys.exit(f"the batch is not mixed (adapted share {share})")
for i in range(len(x)):
    alone = run(s_mixed, x[i : i + 1], True, outputs=(output_name,))[0]
    if not np.array_equal(alone[0], together[i]):
        sys.exit(f"sample {i}: output in the batch differs from its output alone")
print(f"mixed batch ({share:.0%} adapted): every sample bit-identical to its output alone")
print("all checks passed")
