#!/usr/bin/env python3
"""Where a graph's time goes on onnxruntime CPU: runs it with profiling and prints the share of
node time per operator type. Inputs without a default get data of their declared type, the symbolic
(batch) dimension set by --batch; int64 inputs get labels in [0, --classes).

    scripts/profile-step.py STEP.onnx [--batch 128] [--runs 5]

Made for `onnx-deeppatch bench train ... --save-step STEP.onnx`; needs onnxruntime and onnx."""
import argparse
import collections
import json
import os

import numpy as np
import onnx
import onnxruntime as ort

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--classes", type=int, default=10)
parser.add_argument("--runs", type=int, default=5)
args = parser.parse_args()

model = onnx.load(args.model)
defaults = {t.name for t in model.graph.initializer}
rng = np.random.default_rng(0)
feeds = {}
for value in model.graph.input:
    if value.name in defaults:
        continue
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else args.batch for d in tensor.shape.dim]
    if tensor.elem_type == onnx.TensorProto.INT64:
        feeds[value.name] = rng.integers(0, args.classes, size=shape, dtype=np.int64)
    else:
        feeds[value.name] = np.asarray(0.01 * rng.standard_normal(shape), dtype=np.float32)

options = ort.SessionOptions()
options.enable_profiling = True
options.profile_file_prefix = os.path.join(os.environ.get("TMPDIR", "/tmp"), "deeppatch_profile")
session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
session.run(None, feeds)  # warm-up, not counted below
for _ in range(args.runs):
    session.run(None, feeds)
trace = json.load(open(session.end_profiling()))
nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
# The first run's kernels are the warm-up: drop the first len(nodes) / (runs + 1) events.
per_run = len(nodes) // (args.runs + 1)
nodes = nodes[per_run:]
by_type = collections.Counter()
for e in nodes:
    by_type[e["args"]["op_name"]] += e["dur"]
total = sum(by_type.values())
print(f"{args.model}: batch {args.batch}, {args.runs} runs, node time {total / args.runs / 1000:.1f} ms per run")
for op, dur in by_type.most_common(12):
    print(f"  {op:<20} {100 * dur / total:5.1f} %  {dur / args.runs / 1000:8.2f} ms")
