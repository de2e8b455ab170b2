//! `eval` of a γ-patched model: the rows the paper compares, from one pass over the test set.
//!
//! Four models run on every batch: PT (the original, stripped from the patched file), DP-β (the
//! original with every patched layer on its replacement filters, rebuilt from the patch the file
//! carries), DP-γ (the patched model as served, with its per-sample `deeppatch_adapted` flags) and
//! DP-fb (the patched model with `deeppatch_decision` FALSE). The authors' batch-majority row and
//! the oracle routing are derived from those predictions and flags, without running anything again.

use serde_json::Value;

use super::{evaluate_runs, ConditionResult, Evaluation, ModelIo, Run, TestSet};
use crate::backend::{BackendOptions, Pool};
use crate::error::{Error, Result};
use crate::onnx::metadata;
use crate::onnx::proto::ModelProto;
use crate::report::{AccuracyRow, PatchContext};
use crate::units::{beta_model, strip};

/// Images per decision in the authors' semantics (their test batch).
pub const MAJORITY_BATCH: usize = 256;

/// Row labels, in table order.
pub const PT: &str = "PT";
pub const DP_BETA: &str = "DP-β";
pub const DP_GAMMA: &str = "DP-γ";
pub const DP_FALLBACK: &str = "DP-fb";
pub const ORACLE: &str = "oracle";

/// Label of the batch-majority row.
pub fn majority_label() -> String {
    format!("{DP_GAMMA} batch-{MAJORITY_BATCH}")
}

/// The four runs behind a patched model's report.
#[derive(Debug, Clone)]
pub struct PatchedEvaluation {
    /// PT: the original model.
    pub original: Evaluation,
    /// DP-β: every sample on the replacement filters.
    pub beta: Evaluation,
    /// DP-γ: the patched model as served; its results carry the per-sample flags.
    pub served: Evaluation,
    /// DP-fb: the patched model with `deeppatch_decision` FALSE; flags read too.
    pub fallback: Evaluation,
    /// The model's `deeppatch.decision` metadata (null when absent), reported as recorded.
    pub decision: Value,
}

/// Runs PT, DP-β, DP-γ and DP-fb of `patched` on `set`, every batch through the four in turn.
pub fn evaluate(patched: &ModelProto, io: &ModelIo, set: &TestSet, options: &BackendOptions) -> Result<PatchedEvaluation> {
    let original = strip::strip(patched)?;
    let (beta, _) = beta_model(&original, &strip::beta_spec(patched)?)?;
    let open = |model: &ModelProto| Pool::open(&prost::Message::encode_to_vec(model), options);
    let (mut pt, mut dp_beta, mut served, mut fallback) = (open(&original)?, open(&beta)?, open(patched)?, open(patched)?);
    let mut runs = [
        Run::plain(&mut pt),
        Run::plain(&mut dp_beta),
        Run { pool: &mut served, decision: None, read_adapted: true },
        Run { pool: &mut fallback, decision: Some(false), read_adapted: true },
    ];
    let task = format!("evaluating {PT}, {DP_BETA}, {DP_GAMMA}, {DP_FALLBACK}");
    let [original, beta, served, fallback]: [Evaluation; 4] = evaluate_runs(&mut runs, io, set, &task)?
        .try_into()
        .map_err(|_| Error::Internal("four runs, four evaluations expected".into()))?;
    let decision = metadata(patched, "deeppatch.decision").map_or(Value::Null, |text| serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())));
    Ok(PatchedEvaluation { original, beta, served, fallback, decision })
}

impl PatchedEvaluation {
    /// The table rows — PT, DP-β, DP-γ (with its adapted shares), DP-γ batch-256, DP-fb, oracle —
    /// and the position of DP-γ, the model as served.
    pub fn rows(&self) -> (Vec<AccuracyRow>, usize) {
        // Counts per condition (clean first) as a row or as shares.
        let row = |label: &str, counts: &[usize]| self.original.row_of(label, counts);
        let shares = |counts: &[usize]| self.original.shares_of(counts);
        let adapted = |e: &Evaluation| e.conditions().map(|c| c.adapted.iter().filter(|&&a| a).count()).collect::<Vec<_>>();

        let majority: Vec<Vec<bool>> = self.served.conditions().map(|c| majority_flags(&c.adapted, MAJORITY_BATCH)).collect();
        let majority_correct: Vec<usize> = self
            .original
            .conditions()
            .zip(self.beta.conditions())
            .zip(&majority)
            .map(|((pt, beta), flags)| routed_correct(flags, beta, pt, &pt.labels))
            .collect();
        let majority_adapted: Vec<usize> = majority.iter().map(|flags| flags.iter().filter(|&&a| a).count()).collect();
        let oracle: Vec<usize> = self.original.conditions().zip(self.beta.conditions()).enumerate().map(|(i, (pt, beta))| if i == 0 { pt.correct } else { beta.correct }).collect();

        let rows = vec![
            self.original.row(PT),
            self.beta.row(DP_BETA),
            self.served.row(DP_GAMMA).with_adapted(shares(&adapted(&self.served))),
            row(&majority_label(), &majority_correct).with_adapted(shares(&majority_adapted)),
            self.fallback.row(DP_FALLBACK).with_adapted(shares(&adapted(&self.fallback))),
            row(ORACLE, &oracle),
        ];
        (rows, 2)
    }

    /// The report's patch context: the rule, the majority batch and the contract checks.
    pub fn context(&self) -> PatchContext {
        let differing = |a: &Evaluation, b: &Evaluation| {
            a.conditions().zip(b.conditions()).map(|(x, y)| x.predictions.iter().zip(&y.predictions).filter(|(p, q)| p != q).count()).sum()
        };
        let served_differs_from_routed = self
            .original
            .conditions()
            .zip(self.beta.conditions())
            .zip(self.served.conditions())
            .map(|((pt, beta), served)| routed(&served.adapted, beta, pt).zip(&served.predictions).filter(|(p, q)| p != q).count())
            .sum();
        PatchContext {
            decision: self.decision.clone(),
            majority_batch: MAJORITY_BATCH,
            predictions: self.original.conditions().map(|c| c.predictions.len()).sum(),
            fallback_differs: differing(&self.original, &self.fallback),
            served_differs_from_routed,
        }
    }
}

/// Per sample, whether its batch — `batch` consecutive samples, the last one shorter — has more
/// than half of its samples adapted.
pub fn majority_flags(flags: &[bool], batch: usize) -> Vec<bool> {
    flags
        .chunks(batch.max(1))
        .flat_map(|chunk| {
            let adapted = chunk.iter().filter(|&&a| a).count();
            std::iter::repeat_n(2 * adapted > chunk.len(), chunk.len())
        })
        .collect()
}

/// Per sample, the prediction of `adapted` where its flag is set, else of `original`.
fn routed<'r>(flags: &'r [bool], adapted: &'r ConditionResult, original: &'r ConditionResult) -> impl Iterator<Item = &'r i64> {
    flags.iter().zip(adapted.predictions.iter().zip(&original.predictions)).map(|(&flag, (a, o))| if flag { a } else { o })
}

/// Correct predictions when each sample takes `adapted`'s prediction where its flag is set, else
/// `original`'s.
pub fn routed_correct(flags: &[bool], adapted: &ConditionResult, original: &ConditionResult, labels: &[i64]) -> usize {
    routed(flags, adapted, original).zip(labels).filter(|(p, l)| p == l).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::GroupResult;

    fn result(predictions: Vec<i64>, labels: &[i64], adapted: Vec<bool>) -> ConditionResult {
        let correct = predictions.iter().zip(labels).filter(|(p, l)| p == l).count();
        ConditionResult { labels: labels.to_vec(), predictions, correct, adapted }
    }

    #[test]
    fn majority_needs_more_than_half_of_each_batch() {
        let flags = [true, true, false, false, true, false, false, true, true];
        // Two of four is not a majority; the short last batch decides alone.
        assert_eq!(majority_flags(&flags, 4), [false, false, false, false, false, false, false, false, true]);
        assert_eq!(majority_flags(&flags, 3), [true, true, true, false, false, false, true, true, true]);
        assert_eq!(majority_flags(&[], 256), Vec::<bool>::new());
    }

    /// Two samples, one condition: PT right on the first, β right on the second; the served model
    /// adapted only the second, so it is right on both and so is the oracle on the blurred copy.
    #[test]
    fn rows_are_derived_from_predictions_and_flags() {
        let labels = vec![0, 1];
        let evaluation = |clean: Vec<i64>, blurred: Vec<i64>, flags: [bool; 2]| Evaluation {
            labels: labels.clone(),
            clean: result(clean, &labels, flags.to_vec()),
            groups: vec![GroupResult { names: crate::data::CorruptionKind::Blur.names(), levels: vec![("1.0".into(), result(blurred, &labels, flags.to_vec()))] }],
        };
        let patched = PatchedEvaluation {
            original: evaluation(vec![0, 0], vec![0, 0], [false; 2]),
            beta: evaluation(vec![1, 1], vec![1, 1], [true; 2]),
            served: evaluation(vec![0, 1], vec![0, 0], [false, true]),
            fallback: evaluation(vec![0, 0], vec![0, 0], [false; 2]),
            decision: Value::Null,
        };
        let (rows, primary) = patched.rows();
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, [PT, DP_BETA, DP_GAMMA, "DP-γ batch-256", DP_FALLBACK, ORACLE]);
        assert_eq!(primary, 2);
        assert_eq!((rows[2].std, rows[2].groups[0].accuracy.levels[0].1), (100.0, 50.0));
        assert_eq!(rows[2].adapted.as_ref().map(|a| (a.std, a.all)), Some((50.0, 50.0)));
        // One adapted of two is not a majority: the batch stays on PT.
        assert_eq!((rows[3].std, rows[3].adapted.as_ref().map(|a| a.all)), (50.0, Some(0.0)));
        assert_eq!((rows[5].std, rows[5].groups[0].accuracy.levels[0].1), (50.0, 50.0));
        let context = patched.context();
        assert_eq!((context.predictions, context.fallback_differs), (4, 0));
        // Blurred copy: the flag selects β (class 1) for the second sample, the served model said 0.
        assert_eq!(context.served_differs_from_routed, 1);
    }
}
