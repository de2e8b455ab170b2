//! The γ-patched model's contract (docs/specification.md §4) on every bundled model, with
//! random replacement filters at κ = 0.25: checked by an independent onnxruntime script, against a
//! plain Rust computation of the Corrective Rate (and of the probe rule's logit), across backends,
//! and through `strip`.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn, Slice};
use onnx_deeppatch::analysis::site::site;
use onnx_deeppatch::backend::{open_session, BackendKind, BackendOptions};
use onnx_deeppatch::data::npy::{read_npy, NpyData};
use onnx_deeppatch::onnx::graph::GraphIndex;
use onnx_deeppatch::onnx::proto::{ModelProto, ValueInfoProto};
use onnx_deeppatch::onnx::load_model;
use onnx_deeppatch::units::{beta_model, Decision, PatchSpec};
use onnx_deeppatch::Tensor;

/// The first `n` images of the preprocessed reference batch.
fn images(n: usize) -> Tensor {
    let array = read_npy(&common::fixture("reference/cifar10_test64_nchw.npy")).unwrap();
    let NpyData::F32(values) = array.data else { panic!("float32 expected") };
    let full = ArrayD::from_shape_vec(IxDyn(&array.shape), values).unwrap();
    Tensor::F32(full.slice_axis(Axis(0), Slice::from(0..n)).to_owned())
}

fn run(model: &ModelProto, kind: BackendKind, x: &Tensor) -> Vec<(String, Tensor)> {
    let mut session = open_session(&prost::Message::encode_to_vec(model), &BackendOptions { kind, ..Default::default() }).unwrap();
    let names = session.output_names().to_vec();
    names.into_iter().zip(session.run(&[("input", x)]).unwrap()).collect()
}

fn output<'o>(outputs: &'o [(String, Tensor)], name: &str) -> &'o Tensor {
    &outputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}")).1
}

fn patch(model: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<std::ffi::OsString> = vec!["patch".into(), model.into(), out.into()];
    args.extend(extra.iter().map(|a| a.into()));
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let result = common::cli(&refs);
    assert!(result.status.success(), "patch failed: {}", String::from_utf8_lossy(&result.stderr));
}

/// `model` with the value `name` added as a graph output.
fn exposing(model: &ModelProto, name: &str) -> ModelProto {
    let mut copy = model.clone();
    copy.graph.as_mut().unwrap().output.push(ValueInfoProto { name: Some(name.into()), ..Default::default() });
    copy
}

/// The CR of each sample computed in plain Rust from the first patched layer's activations of the
/// original model (z⁻) and of the β model (z⁺), as counts of disagreeing neurons.
fn cr_counts(original: &ModelProto, spec: &PatchSpec, x: &Tensor) -> (Vec<usize>, usize) {
    let graph = original.graph.as_ref().unwrap();
    let index = GraphIndex::new(graph).unwrap();
    let convs = spec.validate(original).unwrap();
    let first = convs.iter().min_by_key(|c| index.topological_order().iter().position(|&p| p == c.position)).unwrap();
    let layer = spec.layers.iter().zip(&convs).find(|(_, c)| c.position == first.position).unwrap().0;
    let z = site(&index, first.position).output;
    let activations = |model: &ModelProto| output(&run(&exposing(model, &z), BackendKind::Ort, x), &z).as_f32().unwrap().clone();
    let (minus, plus) = (activations(original), activations(&beta_model(original, spec).unwrap().0));
    let per_sample = layer.blamed.len() * minus.shape()[2..].iter().product::<usize>();
    let counts = (0..minus.shape()[0])
        .map(|n| {
            let (a, b) = (minus.index_axis(Axis(0), n), plus.index_axis(Axis(0), n));
            layer.blamed.iter().map(|&c| a.index_axis(Axis(0), c).iter().zip(b.index_axis(Axis(0), c)).filter(|(p, q)| (**p > 0.0) != (**q > 0.0)).count()).sum()
        })
        .collect();
    (counts, per_sample)
}

/// The first patched convolution's original output z (after its BatchNormalization when one
/// directly follows), [N, C, H, W], from the original model.
fn probe_input(original: &ModelProto, spec: &PatchSpec, x: &Tensor) -> ArrayD<f32> {
    let graph = original.graph.as_ref().unwrap();
    let index = GraphIndex::new(graph).unwrap();
    let convs = spec.validate(original).unwrap();
    let first = convs.iter().min_by_key(|c| index.topological_order().iter().position(|&p| p == c.position)).unwrap();
    let s = site(&index, first.position);
    let z = s.batchnorm.map_or_else(|| graph.node[s.conv].output[0].clone(), |bn| graph.node[bn].output[0].clone());
    output(&run(&exposing(original, &z), BackendKind::Ort, x), &z).as_f32().unwrap().clone()
}

/// The probe's 3·C features per sample, in plain Rust (f64): mean relu(z_c), share of z_c > 0, and
/// the mean of (mean |z[h, w+1] − z[h, w]| over horizontal pairs, mean |z[h+1, w] − z[h, w]| over
/// vertical pairs).
fn probe_features(z: &ArrayD<f32>) -> Vec<Vec<f64>> {
    let (channels, height, width) = (z.shape()[1], z.shape()[2], z.shape()[3]);
    (0..z.shape()[0])
        .map(|n| {
            let mut features = vec![0.0; 3 * channels];
            for c in 0..channels {
                let at = |h: usize, w: usize| f64::from(z[[n, c, h, w]]);
                let pixels = (height * width) as f64;
                let mut relu = 0.0;
                let mut positive = 0.0;
                for h in 0..height {
                    for w in 0..width {
                        relu += at(h, w).max(0.0);
                        positive += f64::from(u8::from(at(h, w) > 0.0));
                    }
                }
                let (mut across, mut down) = (0.0, 0.0);
                for h in 0..height {
                    for w in 0..width {
                        if w + 1 < width {
                            across += (at(h, w + 1) - at(h, w)).abs();
                        }
                        if h + 1 < height {
                            down += (at(h + 1, w) - at(h, w)).abs();
                        }
                    }
                }
                features[c] = relu / pixels;
                features[channels + c] = positive / pixels;
                features[2 * channels + c] = (across / (height * (width - 1)) as f64 + down / ((height - 1) * width) as f64) / 2.0;
            }
            features
        })
        .collect()
}

/// The probe's logit per sample from the Rust features, and the scale of its terms (Σ |w·x| + |b|).
fn probe_logits(original: &ModelProto, spec: &PatchSpec, decision: &Decision, x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let Decision::Probe { mean, std, weights, bias } = decision else { panic!("a probe expected") };
    probe_features(&probe_input(original, spec, x))
        .iter()
        .map(|f| {
            let terms: Vec<f64> = (0..f.len()).map(|i| f64::from(weights[i]) * (f[i] - f64::from(mean[i])) / f64::from(std[i])).collect();
            (terms.iter().sum::<f64>() + f64::from(*bias), terms.iter().map(|t| t.abs()).sum::<f64>() + f64::from(bias.abs()))
        })
        .unzip()
}

/// A probe standardised on the batch's own features, with fixed pseudo-random weights and the
/// bias that puts the boundary between the two middle logits (a mixed batch).
fn probe_for(original: &ModelProto, spec: &PatchSpec, x: &Tensor) -> Decision {
    let features = probe_features(&probe_input(original, spec, x));
    let count = features[0].len();
    let column = |i: usize| features.iter().map(move |f| f[i]);
    let mean: Vec<f32> = (0..count).map(|i| (column(i).sum::<f64>() / features.len() as f64) as f32).collect();
    let std: Vec<f32> = (0..count)
        .map(|i| {
            let variance = column(i).map(|v| (v - f64::from(mean[i])).powi(2)).sum::<f64>() / features.len() as f64;
            (variance.sqrt() as f32).max(1e-3)
        })
        .collect();
    let weights: Vec<f32> = (0..count).map(|i| ((i * 7919 % 13) as f32 - 6.0) / 6.0).collect();
    let mut probe = Decision::Probe { mean, std, weights, bias: 0.0 };
    let (mut logits, _) = probe_logits(original, spec, &probe, x);
    logits.sort_by(f64::total_cmp);
    let middle = (logits[logits.len() / 2 - 1] + logits[logits.len() / 2]) / 2.0;
    if let Decision::Probe { bias, .. } = &mut probe {
        *bias = -middle as f32;
    }
    probe
}

/// The `deeppatch_cr` output of `patched` on `x`, asserted equal to the Rust count on the same
/// activations, sample by sample.
fn checked_cr(name: &str, patched: &ModelProto, original: &ModelProto, spec: &PatchSpec, x: &Tensor) -> ArrayD<f32> {
    let cr = output(&run(patched, BackendKind::Ort, x), "deeppatch_cr").as_f32().unwrap().clone();
    let (counts, per_sample) = cr_counts(original, spec, x);
    for (n, (&count, &rate)) in counts.iter().zip(cr.iter()).enumerate() {
        assert_eq!((rate * per_sample as f32).round() as usize, count, "{name} sample {n}: CR {rate} vs {count}/{per_sample}");
    }
    cr
}

fn check_model(name: &str, source: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    let spec_path = path("spec.json");
    patch(&source, &path("all.onnx"), &["--random-spec", "--kappa", "0.25", "--seed", "7", "--boundary", "adapt-all", "--save-spec", spec_path.to_str().unwrap()]);
    patch(&source, &path("none.onnx"), &["--spec", spec_path.to_str().unwrap(), "--boundary", "adapt-none"]);

    // CR: the monitoring output equals the Rust count on the same activations, exactly. The
    // original is the model the tool works on (a legacy opset raised to 11).
    let original = onnx_deeppatch::analysis::load(&source).unwrap();
    let spec = PatchSpec::load(&spec_path).unwrap();
    let x = images(64);
    let cr = checked_cr(name, &load_model(&path("none.onnx")).unwrap(), &original, &spec, &x);

    // A boundary at the median CR gives a mixed batch.
    let mut sorted: Vec<f32> = cr.iter().copied().collect();
    sorted.sort_by(f32::total_cmp);
    let median = sorted[sorted.len() / 2];
    patch(&source, &path("mixed.onnx"), &["--spec", spec_path.to_str().unwrap(), "--boundary", &median.to_string()]);

    // The probe rule on the same filters, its bias set so that about half the batch adapts; its
    // logits equal the plain Rust computation on the same activations.
    let probe_spec_path = path("probe.json");
    let mut probe_spec = spec.clone();
    probe_spec.decision = probe_for(&original, &spec, &x);
    probe_spec.save(&probe_spec_path).unwrap();
    patch(&source, &path("probe.onnx"), &["--spec", probe_spec_path.to_str().unwrap()]);
    let probe = load_model(&path("probe.onnx")).unwrap();
    let logits = output(&run(&probe, BackendKind::Ort, &x), "deeppatch_probe_logit").as_f32().unwrap().clone();
    let (expected, scale) = probe_logits(&original, &spec, &probe_spec.decision, &x);
    for (n, (&got, (&want, &scale))) in logits.iter().zip(expected.iter().zip(&scale)).enumerate() {
        assert!((f64::from(got) - want).abs() <= 1e-5 * scale.max(1.0), "{name} sample {n}: probe logit {got} vs {want} (scale {scale})");
    }

    let reference = common::fixture("reference/cifar10_test64_nchw.npy");
    let text = common::run_python(
        "check_patched.py",
        os_args![source, path("all.onnx"), path("none.onnx"), spec_path, reference, path("mixed.onnx"), path("probe.onnx")],
    );
    assert!(text.contains("all checks passed"), "{name}: {text}");

    // Backends agree on the mixed models: same routing, same classes, logits within 1e-3.
    for mixed in [load_model(&path("mixed.onnx")).unwrap(), probe] {
        let (ort, tract) = (run(&mixed, BackendKind::Ort, &x), run(&mixed, BackendKind::Tract, &x));
        assert_eq!(output(&ort, "deeppatch_adapted"), output(&tract, "deeppatch_adapted"), "{name}: routing differs");
        let (a, b) = (output(&ort, "logits").as_f32().unwrap(), output(&tract, "logits").as_f32().unwrap());
        for (p, q) in a.iter().zip(b.iter()) {
            assert!((p - q).abs() <= 1e-3 * p.abs().max(1.0), "{name}: ort {p} vs tract {q}");
        }
    }

    // strip gives the original model back, message for message.
    let result = common::cli(os_args!["strip", path("mixed.onnx"), path("stripped.onnx")]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_eq!(load_model(&path("stripped.onnx")).unwrap(), original, "{name}: strip did not restore the original");

    // File size: the replacement weights plus at most 64 KiB.
    let replacement_bytes: usize = spec.layers.iter().map(|l| 4 * (l.weight.len() + l.bias.as_ref().map_or(0, |b| b.len()))).sum();
    let overhead = std::fs::metadata(path("mixed.onnx")).unwrap().len() as usize - std::fs::metadata(&source).unwrap().len() as usize;
    assert!(overhead <= replacement_bytes + 64 * 1024, "{name}: {overhead} bytes added for {replacement_bytes} bytes of filters");
}

#[test]
fn resnet20() {
    check_model("resnet20", common::fixture_model("resnet20_cifar10"));
}

#[test]
fn tiny_cnn() {
    check_model("tiny_cnn", common::fixture_model("tiny_cnn_cifar10"));
}

#[test]
fn tiny_dw() {
    check_model("tiny_dw", common::fixture_model("tiny_dw_cifar10"));
}

#[test]
fn tiny_vgg() {
    check_model("tiny_vgg", common::fixture("models/tiny_vgg_cifar10.onnx"));
}

/// Opset 8 with Pad, Clip and Slice attributes, BatchNormalization's `spatial` and a weight from a
/// Constant node: raised to opset 11, the file passes onnx.checker (the script), the original
/// computation is unchanged (compared with onnxruntime on the opset-8 file), and merges follow
/// the Constant node.
#[test]
fn legacy_opset8_is_raised_without_changing_the_original_computation() {
    check_model("legacy_opset8", common::fixture("models/legacy_opset8.onnx"));
}

#[test]
fn branchy_cnn_with_dilation_same_padding_and_concat() {
    check_model("branchy_cnn", common::fixture("models/branchy_cnn.onnx"));
}

/// The decision's convolution in each of its forms (docs/patching.md): the CR still equals the
/// count on the original model's own z⁻, exactly.
#[test]
fn decision_joint_in_phases_with_same_pads_batchnorm_and_tanh() {
    check_model("decision_same_tanh", common::fixture("models/decision_same_tanh.onnx"));
}

#[test]
fn decision_joint_without_phases_on_dynamic_spatial_size() {
    check_model("decision_dynamic", common::fixture("models/decision_dynamic.onnx"));
}

#[test]
fn decision_on_grouped_first_convolution() {
    check_model("decision_grouped", common::fixture("models/decision_grouped.onnx"));
}

#[test]
fn decision_reads_the_model_when_blamed_filters_exceed_one_block() {
    check_model("decision_wide", common::fixture("models/decision_wide.onnx"));
}

/// With `bn_adapt` statistics in the spec, z⁺ goes through the replacement channels' own
/// BatchNormalization parameters (the joint convolution's second half); the CR still equals the
/// count on the β model's values.
#[test]
fn decision_with_bn_adapted_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let source = common::fixture("models/tiny_cnn_cifar10.onnx");
    let spec_path = dir.path().join("spec.json");
    patch(&source, &dir.path().join("random.onnx"), &["--random-spec", "--kappa", "0.25", "--seed", "3", "--save-spec", spec_path.to_str().unwrap()]);
    let mut spec = PatchSpec::load(&spec_path).unwrap();
    for layer in &mut spec.layers {
        let ramp = |start: f32, step: f32| ArrayD::from_shape_fn(IxDyn(&[layer.blamed.len()]), |i| start + step * i[0] as f32);
        layer.batchnorm = Some([ramp(0.8, 0.1), ramp(-0.05, 0.02), ramp(-0.1, 0.05), ramp(0.5, 0.25)]);
    }
    spec.save(&spec_path).unwrap();
    let none = dir.path().join("none.onnx");
    patch(&source, &none, &["--spec", spec_path.to_str().unwrap(), "--boundary", "adapt-none"]);
    let spec = PatchSpec::load(&spec_path).unwrap();
    assert!(spec.layers.iter().all(|l| l.batchnorm.is_some()), "the statistics survive the spec's files");
    let cr = checked_cr("tiny_cnn bn_adapt", &load_model(&none).unwrap(), &load_model(&source).unwrap(), &spec, &images(64));
    assert!(cr.iter().any(|&r| r > 0.0), "some neurons disagree");
}

/// SHA-256 of `bytes`, hex.
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The encodings of what the tool builds from one bundled model with a fixed random spec
/// (κ = 0.25, seed 2022): the γ model under the CR rule and under a probe rule, and the training
/// step of the β model (or, where it cannot be built, its error). Their digests pin the bytes, so that restructuring the analysis, the
/// rewrites or the gradient rules cannot change a patched model unnoticed.
fn built_digests(name: &str) -> [String; 3] {
    let model = onnx_deeppatch::analysis::load(&common::fixture_model(name)).unwrap();
    let spec = onnx_deeppatch::units::spec::random_spec(&model, 0.25, 2022, Decision::adapt_all()).unwrap();
    let cr = onnx_deeppatch::units::gamma_model(&model, &spec).unwrap();

    let convs = spec.validate(&model).unwrap();
    let first = onnx_deeppatch::units::gamma::first_patched(&model, &convs).unwrap();
    let features = 3 * convs[first].filters;
    let values = |scale: f32| (0..features).map(|i| scale * (i % 7) as f32 - 1.0).collect::<Vec<f32>>();
    let mut probe_spec = spec.clone();
    probe_spec.decision = Decision::Probe { mean: values(0.5), std: vec![1.5; features], weights: values(0.25), bias: 0.125 };
    let probe = onnx_deeppatch::units::gamma_model(&model, &probe_spec).unwrap();

    let (beta, params) = beta_model(&model, &spec).unwrap();
    let trainable: Vec<&str> =
        params.iter().flat_map(|p| std::iter::once(p.replacement_weight.as_str()).chain(p.replacement_bias.as_deref())).collect();
    // A model whose step cannot be built (a rule that needs a static size) pins its error instead.
    let step = match onnx_deeppatch::autodiff::training_step(&beta, &trainable, &Default::default()) {
        Ok(step) => sha256(&prost::Message::encode_to_vec(&step.model)),
        Err(e) => format!("no step: {e}"),
    };
    let [cr, probe] = [cr, probe].map(|m| sha256(&prost::Message::encode_to_vec(&m)));
    [cr, probe, step]
}

/// The bytes of every bundled model's patched forms, as built before the analysis was split per
/// operator family: any change to them must be deliberate (update the digests in the same commit
/// and say why). Last changed for the `deeppatch.target` and `deeppatch.form` metadata entries;
/// the graphs are the same.
#[test]
fn patched_fixture_models_keep_their_bytes() {
    let expected: [(&str, [&str; 3]); 10] = [
        ("branchy_cnn", ["e484e49cc4d4972f5f19ae0c1a7217a6db73bb68b34644c2d87d79cb3268b936", "c74695306889a1e417a0d605dd6187a118bc61113f5025f09e6c22348fb6f917", "6e671581cad7421f4bb6b8487b6df3e67285fb3080a0aea3eddbf15a891d409e"]),
        ("decision_dynamic", ["05ad75ee0c062ec2e72f103a62845a3e4fe93aacd8cca2011324b69c4724c0ed", "06916a9b4289de24a8d832e5ce7ade116349d2a71db90e401f4d258ad5fb4dc4", "no step: unsupported model: node 'pool' (GlobalAveragePool): the reduced axes must be static"]),
        ("decision_grouped", ["b0fe65f4c215a010d7e82dcf00a34bc587335e647c994ff2afb604b16b094b0f", "7fa2da2f06099b7dce2d5413d9b9f1f28c1a6af40d72b17803bf86efd3ec3fd2", "1890183c556a93be8859f8aaedeca496375e927d8c1e149fa6ab9740936e39fe"]),
        ("decision_same_tanh", ["18c440bcaa25a4f702fbc90ffaff2d71697bea825c034d4139356a17b7fa2f15", "d7135bebe7aaaa13889dc6596d9e6196065f216b9dc901ae14df30de09843f6e", "no step: unsupported model: node 'first_act' (Tanh): no backward rule for this operator, which lies on the gradient path from a trainable tensor to the loss"]),
        ("decision_wide", ["391bca23eb1b0676889710c3750e2555a159353411ffd2da28fa1fd285540e29", "54386ea892045da3fb78c3f34d78b1c64bbcda36172b5ceeea4617b4089ae26f", "3a0ec196a8d57552b6ee72246709f26e8fe927ab8d1e75989f5867083c529acc"]),
        ("legacy_opset8", ["58d64526fe686349cfc5bdaac845328c2f31f727d8d6027600718dd6f99b98cd", "6658b1238b6fcae6f817282c34b1488f5e38b482fadd7297707529f2664a44b5", "bd5487623fcbe13ccbf08d3ab25ea688a6dd82147da682707d122b3510f33ff8"]),
        ("resnet20_cifar10", ["69b2de3a072a7f65b158c3fd36f380a8caf5fcf35f0033e7fe06e7999170b930", "853e71d422713fced68e1aa8d5340750c312780dbdcd506ed28f651050a70285", "31f41315164b352d9ea78c9087aed26ae520906a2387e1d4c17d7a030f293cdb"]),
        ("tiny_cnn_cifar10", ["b981dbf4ccf85998af0b29c97ec0ea140e00066be1245301efe06212ce6c7705", "4dd6912fcdf0d51237958d0662f88a16a106a89cafb17a59ff23de101434e52f", "636f5664d37dc2b8a803c4193e9945dce6c3e85d76765fbdf5bfc0b20b1b1277"]),
        ("tiny_dw_cifar10", ["280c797a7e9f60badca8eab0d0a4ab84ad0128dea27d3d22064fdbcd4096408b", "e903babd496441d558c33042dd08ad2816bdbdc119221b000bc17247da79357f", "fc25085a15a85cebfbddb2fd30662b4c7d44218fcefd70f1c054fe38fca65846"]),
        ("tiny_vgg_cifar10", ["1420a09b97462f20bc90ca4fcb8e788deadb9ae7da0b48467126c1fcd79a1f82", "022ebd4c489e36d442eace939e3c8ffb91256bf71960421fa0944174188e0d20", "e7798a963cbd465394c8d4c83c1ab779b6478aeb9f161b7a8fd3e24580594349"]),
    ];
    let mut differing = Vec::new();
    for (name, digests) in expected {
        let got = built_digests(name);
        if got.iter().zip(digests).any(|(g, d)| g != d) {
            differing.push(format!("(\"{name}\", {got:?}),"));
        }
    }
    assert!(differing.is_empty(), "changed digests:\n{}", differing.join("\n"));
}
