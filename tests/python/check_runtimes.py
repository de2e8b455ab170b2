"""The γ-patched models on other runtimes than the one that made them (docs/deploy.md):

  check_runtimes.py [--openvino] ORIGINAL BATCH_NPY PATCHED [PATCHED ...]

For each PATCHED file (its routing form read from the `deeppatch.form` metadata), on the first 64
images of BATCH_NPY, clean and blurred (a Gaussian of σ = 1.5, reflected borders):
- onnx.checker.check_model(full_check=True) accepts it;
- onnxruntime: non-adapted samples are bit-identical to the original model; in the Scan and Loop
  forms every sample's output is bit-identical to its output alone (the Batch form: within 1e-5);
- onnx.reference.ReferenceEvaluator: outputs within 1e-4 of onnxruntime, the same
  deeppatch_adapted (onnx 1.23's evaluator runs BatchNormalization of opsets 9 to 13 in training
  mode, with the batch's statistics, even on the original model; for those opsets it is given the
  inference formula of the operator's specification);
- with --openvino (this interpreter has the openvino package), for the forms that claim it (Loop,
  Batch): OpenVINO on CPU with an f32 inference precision hint, outputs within 1e-4 of
  onnxruntime, the same deeppatch_adapted, non-adapted samples bit-identical to the original
  model on OpenVINO; the Scan form is reported, not required.
Prints one line per file and runtime, then "all runtime checks passed".
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

TOLERANCE = 1e-4
OPENVINO_FORMS = ("loop", "batch")

args = sys.argv[1:]
with_openvino = args[:1] == ["--openvino"]
if with_openvino:
    args = args[1:]
original_path, batch_path, *patched_paths = args


def blurred(x, sigma=1.5):
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    padded = np.pad(x, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="reflect")
    rows = sum(t * padded[:, :, :, i : i + x.shape[3]] for i, t in enumerate(taps))
    return sum(t * rows[:, :, i : i + x.shape[2], :] for i, t in enumerate(taps)).astype(np.float32)


clean = np.load(batch_path)[:64]
batches = {"clean": clean, "blurred": blurred(clean)}
original = onnx.load(original_path)
input_name, output_name = original.graph.input[0].name, original.graph.output[0].name
options = ort.SessionOptions()
# The overridable switch is an input with a default initializer; onnxruntime warns about it.
options.log_severity_level = 3
ort_original = ort.InferenceSession(original_path, options, providers=["CPUExecutionProvider"])

if with_openvino:
    import openvino

    core = openvino.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}

    def openvino_runner(path):
        compiled = core.compile_model(path, "CPU", f32)
        names = [o.get_any_name() for o in compiled.outputs]

        def run(x):
            result = compiled({input_name: x})
            return {name: result[compiled.output(name)] for name in names}

        return run

    ov_original = openvino_runner(original_path)


class BatchNormalization(OpRun):
    """BatchNormalization at inference, as the specification defines it for every opset."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        normalised = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon)
        return ((normalised * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype),)


def reference_evaluator(model):
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 14)
    return ReferenceEvaluator(model, new_ops=[BatchNormalization] if opset < 14 else None)


def fail(message):
    sys.exit(message)


def same_as_alone(run, x, outputs, exact, label):
    """Each sample's output in the batch against its output alone; the largest difference."""
    worst = 0.0
    for i in range(len(x)):
        alone = run(x[i : i + 1])[output_name][0]
        diff = float(np.abs(alone - outputs[output_name][i]).max())
        if (exact and diff != 0.0) or diff > 1e-5:
            fail(f"{label}, sample {i}: output in the batch differs from its output alone by {diff:.2e}")
        worst = max(worst, diff)
    return worst


for path in patched_paths:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    form = next((p.value for p in model.metadata_props if p.key == "deeppatch.form"), "scan")
    names = [o.name for o in model.graph.output]
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ort_run = lambda x, s=session: dict(zip(names, s.run(names, {input_name: x})))
    reference = reference_evaluator(model)
    ref_run = lambda x, r=reference: dict(zip(names, r.run(names, {input_name: x})))
    ov_run = openvino_runner(path) if with_openvino and form in OPENVINO_FORMS else None
    if with_openvino and ov_run is None:
        try:
            openvino_runner(path)
            print(f"{path} ({form}): OpenVINO loads it")
        except Exception as error:  # the Scan form: OpenVINO's importer has no Scan
            lines = [line for line in str(error).splitlines() if line.strip()]
            print(f"{path} ({form}): OpenVINO refuses it: {next((l for l in lines if 'Scan' in l), lines[0] if lines else '')[:160]}")
    for label, x in batches.items():
        want = ort_run(x)
        adapted = want["deeppatch_adapted"]
        kept = ~adapted
        plain = ort_original.run([output_name], {input_name: x})[0]
        if not np.array_equal(plain[kept], want[output_name][kept]):
            fail(f"{path} ({form}, {label}): onnxruntime: a non-adapted sample differs from the original model")
        alone = same_as_alone(ort_run, x, want, form != "batch", f"{path} ({form}, {label}) onnxruntime")
        print(f"{path} ({form}, {label}): onnxruntime: {adapted.mean():.0%} adapted, the others bit-identical to the original; batch against alone {alone:.1e}")
        runtimes = [("onnx.reference", ref_run)] + ([("OpenVINO", ov_run)] if ov_run else [])
        for runtime, run in runtimes:
            got = run(x)
            if not np.array_equal(got["deeppatch_adapted"], adapted):
                fail(f"{path} ({form}, {label}): {runtime} adapts other samples than onnxruntime")
            diff = max(float(np.abs(got[n].astype(np.float64) - want[n]).max()) for n in names if want[n].dtype == np.float32)
            if diff > TOLERANCE:
                fail(f"{path} ({form}, {label}): {runtime} differs from onnxruntime by {diff:.2e}")
            line = f"{path} ({form}, {label}): {runtime}: max diff {diff:.2e}, same deeppatch_adapted"
            if runtime == "OpenVINO":
                if not np.array_equal(ov_original(x)[output_name][kept], got[output_name][kept]):
                    fail(f"{path} ({form}, {label}): OpenVINO: a non-adapted sample differs from the original model")
                line += ", non-adapted samples bit-identical to the original"
            print(line)
print("all runtime checks passed")
