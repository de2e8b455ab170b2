"""Checks that two ONNX files hold the same message and give identical onnxruntime outputs."""
import sys

import numpy as np
import onnx
import onnxruntime as ort

original, saved = sys.argv[1], sys.argv[2]
a, b = onnx.load(original), onnx.load(saved)
if a != b:
    sys.exit(f"messages differ: {original} vs {saved}")
onnx.checker.check_model(b, full_check=True)
rng = np.random.default_rng(0)
x = rng.standard_normal((7, 3, 32, 32)).astype(np.float32)
outs = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"input": x}) for p in (original, saved)]
for u, v in zip(*outs):
    if not np.array_equal(u, v):
        sys.exit("outputs differ")
print("messages equal, outputs identical")
