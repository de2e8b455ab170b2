"""Independent checks of a γ-patched model with onnxruntime (Python) and onnx:

  check_patched.py ORIGINAL ALL NONE SPEC_JSON BATCH_NPY MIXED [MIXED ...]

ALL adapts every sample, NONE none; each MIXED adapts some but not all of the first 64 images of
BATCH_NPY (e.g. a CR boundary at their median CR, or a probe rule), same replacement filters.
Checks:
- onnx.checker.check_model(full_check=True) accepts every file;
- with deeppatch_decision = False (ALL and every MIXED), and with the adapt-none boundary, outputs
  are bit-identical to the original model's (batches 1, 7, 64);
- the adapt-all model equals a copy of the original whose blamed kernels (and biases) were
  overwritten with the replacement ones (max abs diff <= 1e-5);
- a mixed batch gives every sample exactly its output when run alone (every MIXED).
Prints one line per check and "all checks passed".
"""
import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort

original_path, all_path, none_path, spec_path, batch_path = sys.argv[1:6]
mixed_paths = sys.argv[6:]
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
for path in (all_path, none_path, *mixed_paths):
    onnx.checker.check_model(onnx.load(path), full_check=True)
print("checker: full_check passed")

s_orig, s_all, s_none = session(original_path), session(all_path), session(none_path)
s_mixed = [session(path) for path in mixed_paths]
x = batch[:64]
fallbacks = [("decision=False", s_all, False), ("adapt-none", s_none, None)]
fallbacks += [(f"decision=False ({path})", sess, False) for path, sess in zip(mixed_paths, s_mixed)]
for n in (1, 7, 64):
    want = run(s_orig, x[:n], outputs=(output_name,))[0]
    for label, sess, decision in fallbacks:
        got = run(sess, x[:n], decision, outputs=(output_name,))[0]
        if not np.array_equal(want, got):
            sys.exit(f"{label}, batch {n}: not bit-identical (max diff {np.abs(want - got).max()})")
print("fallback: bit-identical at batches 1, 7, 64")

# The reference for adapt-all: the original with blamed kernels overwritten.
spec = json.load(open(spec_path))
arrays = np.load(spec_path.rsplit(".", 1)[0] + ".npz")
copy = onnx.load(original_path)
initializers = {t.name: t for t in copy.graph.initializer}
# Weights from Constant nodes too (their value attribute).
initializers.update({n.output[0]: n.attribute[0].t for n in copy.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"})
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

# Mixed batches: every sample's output equals its output alone.
for path, sess in zip(mixed_paths, s_mixed):
    together, adapted = run(sess, x, True, outputs=(output_name, "deeppatch_adapted"))
    share = adapted.mean()
    if not 0 < share < 1:
        sys.exit(f"{path}: the batch is not mixed (adapted share {share})")
    for i in range(len(x)):
        alone = run(sess, x[i : i + 1], True, outputs=(output_name,))[0]
        if not np.array_equal(alone[0], together[i]):
            sys.exit(f"{path}, sample {i}: output in the batch differs from its output alone")
    print(f"mixed batch ({share:.0%} adapted, {path}): every sample bit-identical to its output alone")
print("all checks passed")
