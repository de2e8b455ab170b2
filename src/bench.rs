//! Benchmarks that measure ratios side by side in one run, since absolute times drift on shared
//! machines.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{open_session, BackendOptions};
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
}

/// Runs `evaluate` and bare inference alternately `rounds` times over the same images and
/// conditions (clean and every σ), and compares the best rate of each.
pub fn eval_throughput(model_path: &std::path::Path, config: &Config, rounds: usize) -> Result<EvalThroughput> {
    let model = crate::onnx::load_model(model_path)?;
    let io = ModelIo::resolve(&model, &config.preprocess)?;
    let data = crate::data::load_split(config.data_root()?, crate::data::Split::Test, config.data.format)?;
    let preprocess = preprocess_for(&config.preprocess, &data)?;
    let count = config.eval.limit.unwrap_or(data.len()).min(data.len());
    let indices: Vec<usize> = (0..count).collect();
    let data = Arc::new(data);
    let options = BackendOptions { kind: config.backend.kind, device: config.backend.device, threads: config.backend.threads };
    let mut session = open_session(&prost::Message::encode_to_vec(&model), &options)?;
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
        for input in &prepared {
            session.run(&[(io.input.as_str(), input)])?;
        }
        best_inference = best_inference.max(samples as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        evaluate(session.as_mut(), &io, data.clone(), &indices, &config.eval.sigmas, &preprocess, batch_size)?;
        best_eval = best_eval.max(samples as f64 / start.elapsed().as_secs_f64());
    }
    Ok(EvalThroughput {
        images: samples,
        rounds: rounds.max(1),
        eval_rate: best_eval,
        inference_rate: best_inference,
        ratio: best_eval / best_inference,
    })
}
