//! Benchmarks that measure ratios side by side in one run, since absolute times drift on shared
//! machines.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{open_session, BackendOptions, Pool};
use crate::config::Config;
use crate::data::{make_batch, Corruption};
use crate::error::Result;
use crate::eval::{evaluate, preprocess_for, ModelIo};
use crate::tensor::Tensor;

/// Evaluation throughput against bare inference on tensors prepared beforehand.
#[derive(Debug, Clone, Serialize)]
pub struct EvalThroughput {
    pub images: usize,
    pub rounds: usize,
    /// Images per second of `eval` (decoding excluded, blur and preprocessing included).
    pub eval_rate: f64,
    /// Images per second of the backend alone on the same, already preprocessed tensors.
    pub inference_rate: f64,
    /// eval_rate / inference_rate.
    pub ratio: f64,
    /// Peak resident memory of the process, in MiB (see `docs/cli.md` for what it holds).
    pub peak_resident_mib: Option<f64>,
}

/// Runs `evaluate` and bare inference alternately `rounds` times over the same images and
/// conditions (clean and every σ), and compares the best rate of each.
pub fn eval_throughput(model_path: &std::path::Path, config: &Config, rounds: usize) -> Result<EvalThroughput> {
    let model = crate::analysis::load(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let data = crate::data::load_split(config.data_root()?, crate::data::Split::Test, config.data.format)?;
    let preprocess = preprocess_for(&config.preprocess, &data)?;
    let count = config.eval.limit.unwrap_or(data.len()).min(data.len());
    let indices: Vec<usize> = (0..count).collect();
    let data = Arc::new(data);
    let options = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let mut pool = Pool::open(&prost::Message::encode_to_vec(&model), &options)?;
    let batch_size = config.eval.batch_size;

    let corruptions: Vec<Corruption> =
        std::iter::once(Corruption::Clean).chain(config.eval.sigmas.iter().map(|&s| Corruption::Blur(s))).collect();
    let mut prepared = Vec::new();
    for corruption in &corruptions {
        for chunk in indices.chunks(batch_size) {
            prepared.push(Tensor::F32(make_batch(&data, chunk, corruption, &preprocess)?));
        }
    }
    let samples = indices.len() * corruptions.len();
    let (mut best_eval, mut best_inference) = (0.0f64, 0.0f64);
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        pool.map(&prepared, |session, input| session.run_samples(&[(io.input.as_str(), input)], &[io.input.as_str()]))?;
        best_inference = best_inference.max(samples as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        let groups = [crate::data::corruption::blur_group(&indices, &config.eval.sigmas)];
        evaluate(&mut pool, &io, &crate::eval::TestSet { data: data.clone(), indices: &indices, groups: &groups, preprocess: &preprocess, batch_size })?;
        best_eval = best_eval.max(samples as f64 / start.elapsed().as_secs_f64());
    }
    Ok(EvalThroughput {
        images: samples,
        rounds: rounds.max(1),
        eval_rate: best_eval,
        inference_rate: best_inference,
        ratio: best_eval / best_inference,
        peak_resident_mib: peak_resident_mib(),
    })
}

/// Latency of a γ-patched model against its original, one case.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyCase {
    pub batch: usize,
    /// "clean" (no sample adapted: the decision runs, the original path answers), "half" (the
    /// rule's threshold at the batch's median score) or "adapted" (every sample adapted).
    pub case: String,
    pub adapted_share: f64,
    /// Runs of each model, interleaved.
    pub runs: usize,
    /// Fastest run of the original model.
    pub original_ms: f64,
    /// Fastest run of the patched model serving the prediction: the original model's outputs
    /// fetched, as a server returns them (the decision still runs: the `If` reads it).
    pub patched_ms: f64,
    pub ratio: f64,
    /// Fastest run of the patched model with its monitoring outputs (`deeppatch_cr`,
    /// `deeppatch_adapted`, …) fetched too.
    pub patched_with_monitoring_ms: f64,
    pub ratio_with_monitoring: f64,
    /// Medians of the original and the served patched model.
    pub original_median_ms: f64,
    pub patched_median_ms: f64,
    pub ratio_median: f64,
}

/// The `q` quantile (0 = fastest, 0.5 = median) of `times`, by rank.
fn quantile(times: &[f64], q: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN)
}

/// What `bench patch` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PatchCost {
    pub kappa: f64,
    /// The decision rule of the patched models (`cr` or `probe`).
    pub rule: BenchRule,
    pub cases: Vec<LatencyCase>,
    pub original_bytes: usize,
    pub patched_bytes: usize,
    pub replacement_bytes: usize,
}

/// The decision rule `bench patch` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BenchRule {
    /// The Corrective Rate against a boundary.
    Cr,
    /// The probe (its cost does not depend on its weights; fixed ones are used).
    Probe,
}

/// How `bench patch` runs.
#[derive(Debug, Clone)]
pub struct PatchCostOptions {
    pub kappa: f64,
    pub rounds: usize,
    pub rule: BenchRule,
    /// Only the clean cases (batch 1 and the full batch): the decision's cost alone.
    pub clean_only: bool,
}

/// Builds γ-patched models of `model_path` with random replacement filters at `kappa` and times
/// them against the original on real test images, in interleaved single runs.
pub fn patch_cost(model_path: &std::path::Path, config: &Config, options: &PatchCostOptions) -> Result<PatchCost> {
    use crate::units::{gamma_model, spec::random_spec, Decision};
    let model = crate::analysis::load(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let data = crate::data::load_split(config.data_root()?, crate::data::Split::Test, config.data.format)?;
    let preprocess = preprocess_for(&config.preprocess, &data)?;
    let count = data.len().min(256);
    let images = make_batch(&data, &(0..count).collect::<Vec<_>>(), &Corruption::Clean, &preprocess)?;
    let backend = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let encode = |m: &crate::onnx::proto::ModelProto| prost::Message::encode_to_vec(m);

    // The rule's score on the batch, then its threshold below every score (clean), at the median
    // (half) and above every score (adapted).
    let mut spec = random_spec(&model, options.kappa, config.data.seed, Decision::adapt_none())?;
    let (score_output, rule) = match options.rule {
        BenchRule::Cr => (crate::units::CR_OUTPUT, None),
        BenchRule::Probe => (crate::units::PROBE_LOGIT_OUTPUT, Some(first_patched_filters(&model, &spec)?)),
    };
    let with_threshold = |threshold: f32| match rule {
        None => Decision::Cr { boundary: threshold, direction: crate::units::Direction::Below, mu_clean: None, mu_aug: None },
        // logit = mean of the raw features − threshold: adapted when the mean exceeds it.
        Some(channels) => Decision::Probe {
            mean: vec![0.0; 3 * channels],
            std: vec![1.0; 3 * channels],
            weights: vec![1.0 / (3 * channels) as f32; 3 * channels],
            bias: -threshold,
        },
    };
    spec.decision = with_threshold(0.0);
    let mut session = open_session(&encode(&gamma_model(&model, &spec)?), &backend)?;
    let at = session.output_names().iter().position(|n| n == score_output).unwrap_or(0);
    let mut scores: Vec<f32> = session.run(&[(io.input.as_str(), &Tensor::F32(images.clone()))])?[at].as_f32()?.iter().copied().collect();
    scores.sort_by(f32::total_cmp);
    let (low, median, high) = (scores[0], scores[scores.len() / 2], scores[scores.len() - 1]);
    // CR adapts below the boundary, the probe above its threshold.
    let (clean_at, adapted_at) = if rule.is_none() { (low - 1.0, high + 1.0) } else { (high + 1.0, low - 1.0) };
    let mut build = |threshold: f32| -> Result<crate::onnx::proto::ModelProto> {
        spec.decision = with_threshold(threshold);
        gamma_model(&model, &spec)
    };
    let (clean, half, adapted) = (build(clean_at)?, build(median)?, build(adapted_at)?);

    let mut original = open_session(&encode(&model), &backend)?;
    let mut cases = Vec::new();
    let all = [(1, "clean", &clean), (1, "adapted", &adapted), (count, "clean", &clean), (count, "half", &half), (count, "adapted", &adapted)];
    for (batch, case, patched) in all.into_iter().filter(|(_, case, _)| !options.clean_only || *case == "clean") {
        let input = Tensor::F32(images.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..batch)).to_owned());
        let mut monitored = open_session(&encode(patched), &backend)?;
        let mut served = open_session(&encode(&with_outputs_of(patched, &model)), &backend)?;
        let flags_at = monitored.output_names().iter().position(|n| n == crate::units::ADAPTED_OUTPUT).unwrap_or(0);
        let flags = monitored.run(&[(io.input.as_str(), &input)])?;
        let adapted_share = flags[flags_at].as_bool()?.iter().filter(|&&a| a).count() as f64 / batch as f64;
        // Single runs interleaved (original, served, monitored, original, …), so that all three
        // meet the same disturbances on a shared machine; the fastest run of each is its cost
        // undisturbed, the median what a loaded machine gives.
        let runs = options.rounds.max(1) * (1024 / batch).clamp(3, 200);
        let mut times: [Vec<f64>; 3] = Default::default();
        for _ in 0..runs {
            for (times, session) in times.iter_mut().zip([&mut original, &mut served, &mut monitored]) {
                let start = Instant::now();
                session.run(&[(io.input.as_str(), &input)])?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let [fastest, median] = [0.0, 0.5].map(|q| times.each_ref().map(|t| quantile(t, q)));
        cases.push(LatencyCase {
            batch,
            case: case.to_string(),
            adapted_share,
            runs,
            original_ms: fastest[0],
            patched_ms: fastest[1],
            ratio: fastest[1] / fastest[0],
            patched_with_monitoring_ms: fastest[2],
            ratio_with_monitoring: fastest[2] / fastest[0],
            original_median_ms: median[0],
            patched_median_ms: median[1],
            ratio_median: median[1] / median[0],
        });
    }
    let replacement_bytes = spec.layers.iter().map(|l| 4 * (l.weight.len() + l.bias.as_ref().map_or(0, |b| b.len()))).sum();
    Ok(PatchCost {
        kappa: options.kappa,
        rule: options.rule,
        cases,
        original_bytes: encode(&model).len(),
        patched_bytes: encode(&half).len(),
        replacement_bytes,
    })
}

/// `patched` with only the graph outputs `original` has: what a server fetches to answer.
fn with_outputs_of(patched: &crate::onnx::proto::ModelProto, original: &crate::onnx::proto::ModelProto) -> crate::onnx::proto::ModelProto {
    let served: Vec<&str> = original.graph.iter().flat_map(|g| &g.output).map(|o| o.name()).collect();
    let mut model = patched.clone();
    if let Some(graph) = model.graph.as_mut() {
        graph.output.retain(|o| served.contains(&o.name()));
    }
    model
}

/// The number of filters of the spec's first patched convolution (the probe's C).
fn first_patched_filters(model: &crate::onnx::proto::ModelProto, spec: &crate::units::PatchSpec) -> Result<usize> {
    let patched = spec.validate(model)?;
    Ok(patched[crate::units::gamma::first_patched(model, &patched)?].filters)
}

/// Training-step throughput on a β model against the forward pass of the same model.
#[derive(Debug, Clone, Serialize)]
pub struct TrainThroughput {
    pub kappa: f64,
    pub batch: usize,
    pub steps: usize,
    /// Trained tensors and their elements.
    pub trained_tensors: usize,
    pub trained_parameters: usize,
    /// Images per second of the generated training step (forward, backward, SGD update), the
    /// weights carried between steps by the backend.
    pub step_rate: f64,
    /// Images per second of the β model's forward pass alone on the same batch.
    pub forward_rate: f64,
    /// step_rate / forward_rate.
    pub ratio: f64,
    /// Peak resident memory of the process, in MiB.
    pub peak_resident_mib: Option<f64>,
}

/// Times `steps` training steps of batch `batch` on the β model of a random patch at `kappa`
/// (fresh replacement filters, as retraining starts), alternating with forward passes of the same
/// model on the same batch; the fastest round of each counts. `save_step` keeps the step graph for
/// profiling.
pub fn train_throughput(
    model_path: &std::path::Path,
    config: &Config,
    kappa: f64,
    batch: usize,
    steps: usize,
    save_step: Option<&std::path::Path>,
) -> Result<TrainThroughput> {
    use crate::backend::stepping::open_stepping_session;

    let model = crate::analysis::load(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let spec = crate::units::spec::random_spec(&model, kappa, config.data.seed, crate::units::Decision::adapt_all())?;
    let graph = crate::train::step_graph(&model, &spec, config, &io)?;
    let (beta, step) = (&graph.beta, &graph.step);
    if let Some(path) = save_step {
        crate::onnx::save_model(&step.model, path, &crate::onnx::SaveOptions::default())?;
    }
    let carried = graph.carried(&spec)?;
    let trained_parameters = spec.layers.iter().map(|l| l.weight.len() + l.bias.as_ref().map_or(0, |b| b.len())).sum();

    let data = crate::data::load_split(config.data_root()?, crate::data::Split::Train, config.data.format)?;
    let preprocess = preprocess_for(&config.preprocess, &data)?;
    let chosen: Vec<usize> = (0..batch.min(data.len())).collect();
    let images = Tensor::F32(make_batch(&data, &chosen, &Corruption::Blur(1.5), &preprocess)?);
    let labels = Tensor::I64(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[chosen.len()]), chosen.iter().map(|&i| data.labels[i]).collect())
        .map_err(|e| crate::error::Error::Internal(e.to_string()))?);
    let rate = Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), 0.001f32));

    let options = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let mut stepping = open_stepping_session(&prost::Message::encode_to_vec(&step.model), &options, carried)?;
    let mut forward = open_session(&prost::Message::encode_to_vec(beta), &options)?;
    let feeds = [(step.images.as_str(), &images), (step.labels.as_str(), &labels), (step.learning_rate.as_str(), &rate)];
    // Warm-up: plans, allocations, caches.
    stepping.step(&feeds)?;
    forward.run(&[(io.input.as_str(), &images)])?;
    let (mut best_step, mut best_forward) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..steps.max(1) {
        let start = Instant::now();
        stepping.step(&feeds)?;
        best_step = best_step.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        forward.run(&[(io.input.as_str(), &images)])?;
        best_forward = best_forward.min(start.elapsed().as_secs_f64());
    }
    let images_in_batch = chosen.len() as f64;
    let (step_rate, forward_rate) = (images_in_batch / best_step, images_in_batch / best_forward);
    Ok(TrainThroughput {
        kappa,
        batch: chosen.len(),
        steps,
        trained_tensors: step.parameters.len(),
        trained_parameters,
        step_rate,
        forward_rate,
        ratio: step_rate / forward_rate,
        peak_resident_mib: peak_resident_mib(),
    })
}

/// One layer of `bench assess`.
#[derive(Debug, Clone, Serialize)]
pub struct AssessLayerTimes {
    pub index: usize,
    pub name: String,
    pub filters: usize,
    pub naive_s: f64,
    pub fast_s: f64,
    pub ratio: f64,
    /// Share of the masked images (filters × T_val*) the fast method ran; the others kept their
    /// original prediction.
    pub fast_rows_run: f64,
    /// Share of the masked images the fast method ran through the consumer-convolution
    /// correction, and how many of those it reran on the exact path (logits near a tie).
    pub fast_rows_corrected: f64,
    pub fast_rows_rerun: usize,
}

/// What `bench assess` reports.
#[derive(Debug, Clone, Serialize)]
pub struct AssessSpeed {
    /// T_val* images.
    pub images: usize,
    pub rounds: usize,
    /// The original model's pass over T_val* (acc₀), made once per assessment by either method.
    pub original_s: f64,
    pub layers: Vec<AssessLayerTimes>,
    /// `original_s` plus the layers: each method's assessment of these layers.
    pub naive_s: f64,
    pub fast_s: f64,
    pub ratio: f64,
    /// System load (1, 5 and 15 minutes) before and after, where `/proc/loadavg` exists.
    pub load_before: Option<[f64; 3]>,
    pub load_after: Option<[f64; 3]>,
    /// Peak resident memory of the process, in MiB.
    pub peak_resident_mib: Option<f64>,
}

/// Assesses the `layers` (indices among the assessable convolutions, all when `None`) with the
/// fast method and the naive oracle alternately, layer by layer, `rounds` times (each round swaps
/// which goes first), on the same T_val* and backend settings. Keeps each method's fastest time per
/// layer; fails if their counts differ anywhere.
pub fn assess_speed(model_path: &std::path::Path, config: &Config, layers: Option<&[usize]>, rounds: usize) -> Result<AssessSpeed> {
    use crate::assess::{self, Method, Original};
    let load_before = load_average();
    let model = crate::analysis::load(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let data = assess::load_val_star(config)?;
    if data.is_empty() {
        return Err(crate::Error::Config("the validation set is empty".into()));
    }
    let options = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let convs = assess::assessable(&model)?;
    let indices: Vec<usize> = layers.map_or_else(|| (0..convs.len()).collect(), <[usize]>::to_vec);
    let rounds = rounds.max(1);
    let filters: usize = indices.iter().filter_map(|&i| convs.get(i)).map(|c| c.filters).sum();
    let mut progress = crate::progress::Progress::new("bench assess (fast, naive)", 2 * rounds * filters);
    let start = Instant::now();
    let original = Original::predict(&model, &io, &data, &options)?;
    let original_s = start.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for &index in &indices {
        let (mut best, mut runs) = ([f64::INFINITY; 2], [None, None]);
        for round in 0..rounds {
            let order = if round % 2 == 0 { [Method::Fast, Method::Naive] } else { [Method::Naive, Method::Fast] };
            for method in order {
                let start = Instant::now();
                let run = assess::assess_layer(&model, &io, &data, &options, method, index, &original, &mut progress)?;
                let slot = usize::from(method == Method::Naive);
                best[slot] = best[slot].min(start.elapsed().as_secs_f64());
                runs[slot] = Some(run);
            }
        }
        let [Some(fast), Some(naive)] = runs else { return Err(crate::Error::Internal("a benchmark round did not run".into())) };
        if fast.counts != naive.counts {
            return Err(crate::Error::Internal(format!("fast and naive counts differ on layer {index} ({})", naive.counts.name)));
        }
        times.push(AssessLayerTimes {
            index,
            name: naive.counts.name,
            filters: naive.counts.filters,
            naive_s: best[1],
            fast_s: best[0],
            ratio: best[1] / best[0],
            fast_rows_run: fast.rows_run as f64 / fast.rows_total.max(1) as f64,
            fast_rows_corrected: fast.rows_corrected as f64 / fast.rows_total.max(1) as f64,
            fast_rows_rerun: fast.rows_rerun,
        });
    }
    progress.finish();
    let naive_s = original_s + times.iter().map(|t| t.naive_s).sum::<f64>();
    let fast_s = original_s + times.iter().map(|t| t.fast_s).sum::<f64>();
    Ok(AssessSpeed { images: data.len(), rounds, original_s, layers: times, naive_s, fast_s, ratio: naive_s / fast_s, load_before, load_after: load_average(), peak_resident_mib: peak_resident_mib() })
}

/// The 1, 5 and 15 minute load averages, where the system publishes them.
/// This process's peak resident memory so far, in MiB, where `/proc/self/status` exists: the
/// benches report it so that memory growth shows beside speed.
fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// What validating a model costs against the whole `patch --random-spec` path on the same file.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationCost {
    pub rounds: usize,
    /// Fastest round of each, in milliseconds: reading and decoding the file, validating it as
    /// loading does ([`crate::analysis::validate`]: structure, types and shapes), and `patch` as the
    /// command runs it (load with validation, random spec, γ rewrite, writing the file atomically).
    pub decode_ms: f64,
    pub validate_ms: f64,
    pub patch_ms: f64,
    /// validate_ms / patch_ms, in percent.
    pub validation_share: f64,
    /// The first validation in the process (nothing cached yet, one-time tables built), as a
    /// `patch` command meets it.
    pub validate_first_ms: f64,
    /// The `patch --random-spec` command as a user runs it (a process of its own), fastest round.
    pub command_ms: f64,
    /// validate_first_ms / command_ms, in percent.
    pub command_share: f64,
}

/// Times decoding, validation, the `patch` path in this process and the `patch` command run by
/// `executable` alternately `rounds` times; the fastest round of each counts.
pub fn validation_cost(model_path: &std::path::Path, rounds: usize, executable: &std::path::Path) -> Result<ValidationCost> {
    use prost::Message;
    let (mut decode, mut validate, mut patch, mut command) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let mut validate_first = None;
    let folder = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let output = folder.path().join("patched.onnx");
    let command_output = folder.path().join("patched-by-command.onnx");
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        let bytes = crate::onnx::io::read_input(model_path, crate::onnx::io::MODEL_FILE_LIMIT)?;
        let model = crate::onnx::proto::ModelProto::decode(bytes.as_slice())
            .map_err(|e| crate::Error::model(model_path, e.to_string()))?;
        decode = decode.min(started.elapsed().as_secs_f64());

        let started = Instant::now();
        crate::analysis::validate(&model, model_path)?;
        let elapsed = started.elapsed().as_secs_f64();
        validate = validate.min(elapsed);
        validate_first.get_or_insert(elapsed);

        let started = Instant::now();
        let status = std::process::Command::new(executable)
            .args(["patch", "--random-spec", "--quiet"])
            .arg(model_path)
            .arg(&command_output)
            .status()
            .map_err(|e| crate::Error::io(executable, e))?;
        if !status.success() {
            return Err(crate::Error::Config(format!("{} patch {} ended with {status}", executable.display(), model_path.display())));
        }
        command = command.min(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let model = crate::analysis::load(model_path)?;
        let spec = crate::units::spec::random_spec(&model, 0.25, 2022, crate::units::Decision::adapt_all())?;
        let patched = crate::units::gamma_model(&model, &spec)?;
        crate::onnx::save_model(&patched, &output, &crate::onnx::SaveOptions { protect: Some(model_path.to_path_buf()), ..Default::default() })?;
        patch = patch.min(started.elapsed().as_secs_f64());
    }
    Ok(ValidationCost {
        rounds,
        decode_ms: decode * 1e3,
        validate_ms: validate * 1e3,
        patch_ms: patch * 1e3,
        validation_share: 100.0 * validate / patch,
        validate_first_ms: validate_first.unwrap_or(validate) * 1e3,
        command_ms: command * 1e3,
        command_share: 100.0 * validate_first.unwrap_or(validate) / command,
    })
}
