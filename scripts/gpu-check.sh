#!/usr/bin/env bash
# The CUDA path end to end, for a machine with an NVIDIA GPU: assessment, two training epochs with the
# replacement weights and momenta kept in GPU memory between steps (ONNX Runtime I/O binding), the
# same on the CPU for comparison, then the trained patch evaluated on the GPU. Small: tiny_cnn and the
# bundled CIFAR-10 subset (a minute or two).
#
# Needs ONNX Runtime's GPU build with its CUDA and cuDNN libraries: `pip install onnxruntime-gpu` in
# the Python environment that VIRTUAL_ENV names, or ORT_DYLIB_PATH set to its libonnxruntime.
#
#     scripts/gpu-check.sh [cuda:N]
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda}"
bin="${BIN:-target/release/onnx-deeppatch}"
[ -x "$bin" ] || cargo build --release --locked
python="${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/}python3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
model=fixtures/models/tiny_cnn_cifar10.onnx
common=(--config fixtures/cifar10.yaml --backend ort)

"$bin" assess "$model" "${common[@]}" --device "$device" --out "$work/assessment.json" >/dev/null
for where in "$device" cpu; do
  "$bin" train "$model" "${common[@]}" --device "$where" --epochs 2 --assessment "$work/assessment.json" \
    --out "$work/run-${where%%:*}" >/dev/null
done
"$python" - "$work/run-${device%%:*}" "$work/run-cpu" <<'PY'
import json, sys
import numpy as np
gpu, cpu = sys.argv[1], sys.argv[2]
a, b = np.load(f"{gpu}/spec.npz"), np.load(f"{cpu}/spec.npz")
worst = max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-12)) for k in b.files)
la = [e["loss"] for e in json.load(open(f"{gpu}/train.json"))["epochs"]]
lb = [e["loss"] for e in json.load(open(f"{cpu}/train.json"))["epochs"]]
print(f"GPU vs CPU after 2 epochs: weights within {worst:.2e} (relative), losses {la} vs {lb}")
assert worst < 1e-2 and all(abs(x - y) < 1e-2 for x, y in zip(la, lb)), "the CUDA run differs from the CPU run"
PY
"$bin" patch "$model" "$work/beta.onnx" --spec "$work/run-${device%%:*}/spec.json" --boundary adapt-all
"$bin" eval "$work/beta.onnx" "${common[@]}" --device "$device"
echo "gpu-check: the CUDA path trains and evaluates like the CPU"
