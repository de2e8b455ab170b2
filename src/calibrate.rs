//! Calibration of the γ decision (BRIEF §2.4, issue 6.1): fits the per-sample rule on T_val (clean)
//! and T_val* (six blurred copies) and reports three rules side by side on T_val° = both.
//!
//! One pass of a measuring model over T_val° gives, per sample, the CR, the probe's raw features
//! and the original path's prediction; one pass of the β model gives the replacement path's
//! prediction. Any rule's routed accuracy is then a selection between the two predictions, so the
//! rules are compared without rerunning a model. The chosen rule is finally served: its γ model
//! runs over T_val° once and its own figures go into the report (`served`).
//!
//! Rules: `cr-midpoint` (the paper), `cr-accuracy` (the CR boundary and side with the best T_val°
//! accuracy among those keeping clean accuracy ≥ the original's − 0.3 points) and `probe` (a
//! logistic regression on channel statistics, see `units::decision::probe_logit`). docs/calibration.md
//! has the file forms.

mod logistic;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{open_session, BackendOptions, Session};
use crate::config::{Config, SIGMAS};
use crate::data::split::{stratified_split, ValSize};
use crate::data::{load_split, make_batch, Corruption, Split};
use crate::error::{Error, Result};
use crate::eval::{argmax, preprocess_for, ModelIo};
use crate::onnx::builder::{tensor_info, FLOAT};
use crate::onnx::proto::ModelProto;
use crate::progress::Progress;
use crate::tensor::Tensor;
use crate::units::decision::PROBE_FEATURES;
use crate::units::{beta_model, gamma_model, Decision, Direction, PatchSpec, ADAPTED_OUTPUT, CR_OUTPUT};

/// How far below the original's clean T_val accuracy (in points) a rule may go.
pub const CLEAN_TOLERANCE: f64 = 0.3;
/// L2 penalty of the probe's logistic regression (on the weights, not the bias).
pub const PROBE_L2: f64 = 1e-3;

/// Which rule to put into the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RuleChoice {
    /// The best T_val° accuracy among the rules that keep clean accuracy; the original (no
    /// adaptation) when none does.
    Auto,
    CrMidpoint,
    CrAccuracy,
    Probe,
}

/// What `calibrate` is asked to do.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    pub rule: RuleChoice,
}

/// One rule's decision and its figures on T_val° (accuracies and adapted shares in percent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleFigures {
    pub rule: String,
    pub decision: Decision,
    pub clean_accuracy: f64,
    pub star_accuracy: f64,
    pub val_accuracy: f64,
    pub adapted_clean: f64,
    pub adapted_star: f64,
    /// Whether clean accuracy ≥ the original's − [`CLEAN_TOLERANCE`].
    pub keeps_clean: bool,
}

/// The calibration artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// T_val images (T_val* has six times as many).
    pub val_images: usize,
    pub mu_clean: f64,
    pub mu_aug: f64,
    /// The original model's figures (nothing adapted).
    pub original: RuleFigures,
    /// cr-midpoint, cr-accuracy and probe, in that order.
    pub rules: Vec<RuleFigures>,
    /// The rule put into the spec (`original` when auto found none that keeps clean accuracy).
    pub chosen: String,
    /// The chosen rule's figures measured by running its γ model over T_val°.
    pub served: RuleFigures,
    /// Fingerprint of the validation images.
    pub data_fingerprint: String,
    /// Per-sample values behind the figures, for the histograms.
    #[serde(skip)]
    pub samples: Samples,
}

/// Per-sample measurements on T_val° (clean samples first, then each σ in turn).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub star: Vec<bool>,
    pub labels: Vec<i64>,
    pub cr: Vec<f32>,
    /// The probe's 3·C features per sample (see `Decision::Probe`).
    pub features: Vec<Vec<f64>>,
    pub original: Vec<i64>,
    pub beta: Vec<i64>,
    /// The fitted probe's logit per sample.
    pub probe_logit: Vec<f64>,
}

impl Calibration {
    /// Puts the chosen decision into `spec`, with the CR statistics in its metadata.
    pub fn apply(&self, spec: &mut PatchSpec) {
        spec.decision = self.served.decision.clone();
        let statistics = serde_json::json!({ "rule": self.chosen, "mu_clean": self.mu_clean, "mu_aug": self.mu_aug });
        spec.metadata.insert("calibration".into(), statistics.to_string());
    }

    /// Writes the report as JSON, atomically.
    pub fn save_report(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        crate::onnx::io::write_atomically(path, format!("{json}\n").as_bytes())
    }

    /// Writes `cr.svg` (CR on T_val and T_val*) and `probe_logit.svg` into `dir`.
    pub fn save_histograms(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let s = &self.samples;
        let split = |values: Vec<f64>| -> (Vec<f64>, Vec<f64>) {
            let clean = values.iter().zip(&s.star).filter(|(_, star)| !**star).map(|(v, _)| *v).collect();
            let star = values.iter().zip(&s.star).filter(|(_, star)| **star).map(|(v, _)| *v).collect();
            (clean, star)
        };
        let (cr_clean, cr_star) = split(s.cr.iter().map(|&v| f64::from(v)).collect());
        let (logit_clean, logit_star) = split(s.probe_logit.clone());
        for (file, title, axis, clean, star) in [
            ("cr.svg", "Corrective Rate at the first patched layer", "CR", &cr_clean, &cr_star),
            ("probe_logit.svg", "Probe logit (adapt when > 0)", "logit", &logit_clean, &logit_star),
        ] {
            let svg = crate::report::histogram::histogram(title, axis, &[("T_val (clean)", clean), ("T_val* (blurred)", star)], 40);
            let path = dir.join(file);
            crate::onnx::io::write_atomically(&path, svg.as_bytes())?;
        }
        Ok(())
    }

    /// The figures as a text table.
    pub fn summary(&self) -> String {
        let mut text = format!("μ_clean {:.4}  μ_aug {:.4}  ({} T_val images, six blurred copies)\n", self.mu_clean, self.mu_aug, self.val_images);
        text += "rule          clean   star    T_val°  adapted clean/star\n";
        for f in std::iter::once(&self.original).chain(&self.rules) {
            text += &format!(
                "{:<13} {:>6.2}  {:>6.2}  {:>6.2}  {:>5.1} % / {:>5.1} %{}\n",
                f.rule,
                f.clean_accuracy,
                f.star_accuracy,
                f.val_accuracy,
                f.adapted_clean,
                f.adapted_star,
                if f.keeps_clean { "" } else { "  (loses clean accuracy)" }
            );
        }
        text + &format!("chosen: {} (served: T_val° {:.2})\n", self.chosen, self.served.val_accuracy)
    }
}

/// T_val° as preprocessed batches: T_val clean, then T_val blurred at every σ of the augmentor.
struct ValSet {
    batches: Vec<(bool, Tensor)>,
    labels: Vec<i64>,
    star: Vec<bool>,
    images: usize,
    fingerprint: String,
}

/// The split `assess` uses (stratified, seeded), clean and blurred.
fn load_val_set(config: &Config) -> Result<ValSet> {
    let train = load_split(config.data_root()?, Split::Train, config.data.format)?;
    let size = config.data.val_size.map_or(ValSize::Fraction(config.data.val_fraction), ValSize::Count);
    let (_, val) = stratified_split(&train.labels, size, config.data.seed)?;
    let preprocess = preprocess_for(&config.preprocess, &train)?;
    let corruptions = std::iter::once(Corruption::Clean).chain(SIGMAS.iter().map(|&s| Corruption::Blur(s)));
    let (mut batches, mut labels, mut star) = (Vec::new(), Vec::new(), Vec::new());
    for corruption in corruptions {
        let blurred = corruption != Corruption::Clean;
        for chunk in val.chunks(config.eval.batch_size.max(1)) {
            batches.push((blurred, Tensor::F32(make_batch(&train, chunk, &corruption, &preprocess)?)));
            labels.extend(chunk.iter().map(|&i| train.labels[i]));
            star.extend(std::iter::repeat_n(blurred, chunk.len()));
        }
    }
    Ok(ValSet { batches, labels, star, images: val.len(), fingerprint: train.subset(&val).fingerprint() })
}

/// Runs `session` over every batch and returns the named outputs, concatenated per output.
fn run_all(session: &mut dyn Session, input: &str, data: &ValSet, outputs: &[&str], label: &str) -> Result<Vec<Vec<Tensor>>> {
    let positions: Vec<usize> = outputs
        .iter()
        .map(|name| session.output_names().iter().position(|n| n == name).ok_or_else(|| Error::Internal(format!("the {label} model has no output '{name}'"))))
        .collect::<Result<_>>()?;
    let mut collected = vec![Vec::new(); outputs.len()];
    let mut progress = Progress::new(label, data.labels.len());
    for (_, batch) in &data.batches {
        let mut results = session.run(&[(input, batch)])?;
        for (slot, &position) in positions.iter().enumerate() {
            collected[slot].push(std::mem::replace(&mut results[position], Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[0])))));
        }
        progress.advance(batch.shape()[0]);
    }
    progress.finish();
    Ok(collected)
}

fn predictions(logits: &[Tensor]) -> Result<Vec<i64>> {
    let mut predicted = Vec::new();
    for tensor in logits {
        predicted.extend(tensor.as_f32()?.axis_iter(ndarray::Axis(0)).map(|row| argmax(row.iter().copied())));
    }
    Ok(predicted)
}

/// `model` (a γ model whose rule is the probe) with the probe's raw features as an extra output.
fn exposing_features(mut model: ModelProto) -> ModelProto {
    if let Some(graph) = model.graph.as_mut() {
        graph.output.push(tensor_info(PROBE_FEATURES, FLOAT, Vec::new()));
    }
    model
}

/// Calibrates the γ decision of `spec` for `model` on the data named by `config`.
pub fn calibrate(model: &ModelProto, spec: &PatchSpec, config: &Config, options: &CalibrateOptions) -> Result<Calibration> {
    let io = ModelIo::resolve(model, &config.preprocess)?;
    let backend = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let encode = |m: &ModelProto| prost::Message::encode_to_vec(m);
    let convs = spec.validate(model)?;
    let channels = convs[crate::units::gamma::first_patched(model, &convs)?].filters;
    let data = load_val_set(config)?;

    // The measuring model: a probe that never adapts (zero weights, bias −1) computes CR and the
    // features while the original path answers.
    let mut measuring = spec.clone();
    measuring.decision = Decision::Probe { mean: vec![0.0; 3 * channels], std: vec![1.0; 3 * channels], weights: vec![0.0; 3 * channels], bias: -1.0 };
    let mut session = open_session(&encode(&exposing_features(gamma_model(model, &measuring)?)), &backend)?;
    let measured = run_all(session.as_mut(), &io.input, &data, &[io.output.as_str(), CR_OUTPUT, PROBE_FEATURES], "measuring")?;
    let mut session = open_session(&encode(&beta_model(model, spec)?.0), &backend)?;
    let beta = run_all(session.as_mut(), &io.input, &data, &[io.output.as_str()], "β path")?;

    let mut samples = Samples { star: data.star.clone(), labels: data.labels.clone(), ..Default::default() };
    samples.original = predictions(&measured[0])?;
    samples.beta = predictions(&beta[0])?;
    for tensor in &measured[1] {
        samples.cr.extend(tensor.as_f32()?.iter().copied());
    }
    for tensor in &measured[2] {
        samples.features.extend(tensor.as_f32()?.outer_iter().map(|row| probe_features(&row.iter().copied().collect::<Vec<f32>>(), channels)));
    }

    let mean_of = |star: bool| -> f64 {
        let values: Vec<f64> = samples.cr.iter().zip(&samples.star).filter(|(_, s)| **s == star).map(|(c, _)| f64::from(*c)).collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    let (mu_clean, mu_aug) = (mean_of(false), mean_of(true));
    let original = figures("original", Decision::adapt_none(), &vec![false; samples.labels.len()], &samples, None);
    let floor = original.clean_accuracy - CLEAN_TOLERANCE;
    let judge = |f: RuleFigures| RuleFigures { keeps_clean: f.clean_accuracy >= floor, ..f };
    let original = judge(original);

    // cr-midpoint: the paper's boundary, adapted on μ_aug's side.
    let direction = if mu_aug < mu_clean { Direction::Below } else { Direction::Above };
    let boundary = ((mu_clean + mu_aug) / 2.0) as f32;
    let midpoint = Decision::Cr { boundary, direction, mu_clean: Some(mu_clean as f32), mu_aug: Some(mu_aug as f32) };
    let flags = cr_flags(&samples.cr, boundary, direction);
    let midpoint = judge(figures("cr-midpoint", midpoint, &flags, &samples, None));
    let accuracy = judge(best_cr_boundary(&samples, floor, mu_clean, mu_aug));

    // probe: standardised on T_val°, logistic regression T_val (0) against T_val* (1).
    let fit = logistic::fit(&samples.features, &samples.star, PROBE_L2);
    samples.probe_logit = samples.features.iter().map(|f| fit.logit(f)).collect();
    let flags: Vec<bool> = samples.probe_logit.iter().map(|&l| l > 0.0).collect();
    let probe = judge(figures("probe", fit.decision(), &flags, &samples, None));

    let rules = vec![midpoint, accuracy, probe];
    let chosen = match options.rule {
        RuleChoice::CrMidpoint => Some(&rules[0]),
        RuleChoice::CrAccuracy => Some(&rules[1]),
        RuleChoice::Probe => Some(&rules[2]),
        // The first of the best: ties go to the simpler rule.
        RuleChoice::Auto => rules.iter().filter(|r| r.keeps_clean).fold(None, |best: Option<&RuleFigures>, r| match best {
            Some(b) if b.val_accuracy >= r.val_accuracy => Some(b),
            _ => Some(r),
        }),
    };
    let chosen = chosen.unwrap_or(&original).clone();

    // The chosen rule as served: its γ model over T_val°.
    let mut served_spec = spec.clone();
    served_spec.decision = chosen.decision.clone();
    let mut session = open_session(&encode(&gamma_model(model, &served_spec)?), &backend)?;
    let served = run_all(session.as_mut(), &io.input, &data, &[io.output.as_str(), ADAPTED_OUTPUT], "serving")?;
    let mut adapted = Vec::new();
    for tensor in &served[1] {
        adapted.extend(tensor.as_bool()?.iter().copied());
    }
    let served = judge(figures(&chosen.rule, chosen.decision.clone(), &adapted, &samples, Some(&predictions(&served[0])?)));

    Ok(Calibration {
        val_images: data.images,
        mu_clean,
        mu_aug,
        original,
        rules,
        chosen: chosen.rule.clone(),
        served,
        data_fingerprint: data.fingerprint,
        samples,
    })
}

/// The 3·C probe features from the graph's raw ones [f1 (C), f2 (C), horizontal (C), vertical (C)].
fn probe_features(raw: &[f32], channels: usize) -> Vec<f64> {
    let mut features: Vec<f64> = raw[..2 * channels].iter().map(|&v| f64::from(v)).collect();
    features.extend((0..channels).map(|c| (f64::from(raw[2 * channels + c]) + f64::from(raw[3 * channels + c])) / 2.0));
    features
}

fn cr_flags(cr: &[f32], boundary: f32, direction: Direction) -> Vec<bool> {
    cr.iter().map(|&c| if direction == Direction::Below { c < boundary } else { c > boundary }).collect()
}

/// A rule's figures from per-sample flags: adapted samples take the β prediction (or `served`
/// predictions when given: the γ model's own outputs).
fn figures(rule: &str, decision: Decision, adapted: &[bool], samples: &Samples, served: Option<&[i64]>) -> RuleFigures {
    let mut counts = [[0usize; 3]; 2]; // [clean, star] × [images, correct, adapted]
    for (i, &flag) in adapted.iter().enumerate() {
        let predicted = match served {
            Some(p) => p[i],
            None if flag => samples.beta[i],
            None => samples.original[i],
        };
        let group = &mut counts[usize::from(samples.star[i])];
        group[0] += 1;
        group[1] += usize::from(predicted == samples.labels[i]);
        group[2] += usize::from(flag);
    }
    let percent = |part: usize, whole: usize| 100.0 * part as f64 / whole.max(1) as f64;
    RuleFigures {
        rule: rule.to_string(),
        decision,
        clean_accuracy: percent(counts[0][1], counts[0][0]),
        star_accuracy: percent(counts[1][1], counts[1][0]),
        val_accuracy: percent(counts[0][1] + counts[1][1], counts[0][0] + counts[1][0]),
        adapted_clean: percent(counts[0][2], counts[0][0]),
        adapted_star: percent(counts[1][2], counts[1][0]),
        keeps_clean: true,
    }
}

/// cr-accuracy: every boundary between two distinct CR values (and beyond both ends), on either
/// side; the best T_val° accuracy among those whose clean accuracy stays ≥ `floor` (ties: the
/// first found, below before above, lower boundaries first). Adapting nothing always qualifies.
fn best_cr_boundary(samples: &Samples, floor: f64, mu_clean: f64, mu_aug: f64) -> RuleFigures {
    let mut values: Vec<f32> = samples.cr.clone();
    values.sort_by(f32::total_cmp);
    values.dedup();
    let mut boundaries = vec![values.first().map_or(0.0, |v| v - 1.0)];
    boundaries.extend(values.windows(2).map(|w| w[0] + (w[1] - w[0]) / 2.0));
    boundaries.push(values.last().map_or(1.0, |v| v + 1.0));
    let mut best: Option<RuleFigures> = None;
    for direction in [Direction::Below, Direction::Above] {
        for &boundary in &boundaries {
            let decision = Decision::Cr { boundary, direction, mu_clean: Some(mu_clean as f32), mu_aug: Some(mu_aug as f32) };
            let candidate = figures("cr-accuracy", decision, &cr_flags(&samples.cr, boundary, direction), samples, None);
            let better = best.as_ref().is_none_or(|b| candidate.val_accuracy > b.val_accuracy);
            if candidate.clean_accuracy >= floor && better {
                best = Some(candidate);
            }
        }
    }
    best.unwrap_or_else(|| figures("cr-accuracy", Decision::adapt_none(), &vec![false; samples.cr.len()], samples, None))
}

/// `calibrate` as the command runs it: load, calibrate, write the spec, the report and the
/// histograms. Refuses to overwrite the input spec.
pub fn calibrate_files(
    model_path: &Path,
    spec_path: &Path,
    out_spec: &Path,
    report: &Path,
    svg_dir: Option<&Path>,
    config: &Config,
    options: &CalibrateOptions,
) -> Result<Calibration> {
    let same = |a: &Path, b: &Path| -> bool {
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
        canonical(a) == canonical(b)
    };
    if same(spec_path, out_spec) || same(&crate::units::spec::weights_path(spec_path), &crate::units::spec::weights_path(out_spec)) {
        return Err(Error::Config(format!("--out-spec {} would overwrite the input spec; give another path", out_spec.display())));
    }
    let model = crate::onnx::load_model(model_path)?;
    let mut spec = PatchSpec::load(spec_path)?;
    let calibration = calibrate(&model, &spec, config, options)?;
    calibration.apply(&mut spec);
    spec.save(out_spec)?;
    calibration.save_report(report)?;
    if let Some(dir) = svg_dir {
        calibration.save_histograms(dir)?;
    }
    Ok(calibration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(cr: &[f32], star: &[bool], original_right: &[bool], beta_right: &[bool]) -> Samples {
        Samples {
            star: star.to_vec(),
            labels: vec![1; cr.len()],
            cr: cr.to_vec(),
            original: original_right.iter().map(|&r| i64::from(r)).collect(),
            beta: beta_right.iter().map(|&r| i64::from(r)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn figures_select_the_path_per_sample() {
        let s = samples(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true], &[true, true, false, true], &[false, true, true, false]);
        let f = figures("x", Decision::adapt_all(), &[false, true, true, false], &s, None);
        assert_eq!((f.clean_accuracy, f.star_accuracy, f.val_accuracy), (100.0, 100.0, 100.0));
        assert_eq!((f.adapted_clean, f.adapted_star), (50.0, 50.0));
    }

    #[test]
    fn cr_accuracy_finds_the_separating_boundary_and_keeps_clean() {
        // Clean samples have CR 0.5–0.6 and are right on the original path; blurred ones have CR
        // 0.1–0.2 and are right on the β path only: adapt below a boundary between 0.2 and 0.5.
        let s = samples(
            &[0.5, 0.6, 0.1, 0.2],
            &[false, false, true, true],
            &[true, true, false, false],
            &[false, false, true, true],
        );
        let best = best_cr_boundary(&s, 100.0 - CLEAN_TOLERANCE, 0.55, 0.15);
        let Decision::Cr { boundary, direction, .. } = best.decision else { panic!() };
        assert_eq!(direction, Direction::Below);
        assert!(boundary > 0.2 && boundary < 0.5, "{boundary}");
        assert_eq!(best.val_accuracy, 100.0);
        // A floor nothing but "adapt nothing" meets.
        let s = samples(&[0.5, 0.1], &[false, true], &[true, false], &[false, true]);
        let constrained = best_cr_boundary(&s, 100.0, 0.5, 0.1);
        assert_eq!(constrained.clean_accuracy, 100.0);
    }

    #[test]
    fn raw_probe_features_fold_into_three_per_channel() {
        assert_eq!(probe_features(&[1.0, 2.0, 3.0, 4.0, 0.5, 2.0, 1.5, 4.0], 2), [1.0, 2.0, 3.0, 4.0, 1.0, 3.0]);
    }
}
