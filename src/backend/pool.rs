//! Sessions of one model for runs that do not depend on each other (the batches of an evaluation,
//! the chunks of masked images of an assessment). tract computes a run on one thread, so on tract
//! a pool runs them side by side, one session per worker thread; ONNX Runtime already spreads one
//! run over its intra-op threads, so on ort a pool holds one session and runs them in turn.

use std::num::NonZeroUsize;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{open_session, BackendKind, BackendOptions, Session};
use crate::error::{Error, Result};

/// How many sessions of one model run side by side: on tract `threads` when set, else one per
/// core; on ort one.
pub fn workers(options: &BackendOptions) -> usize {
    match options.kind {
        BackendKind::Tract => options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get)),
        BackendKind::Ort => 1,
    }
}

/// Up to [`workers`] sessions of one model.
pub struct Pool {
    /// The model, kept to open the other sessions when a call first needs them; `None` with one
    /// worker.
    model: Option<Vec<u8>>,
    options: BackendOptions,
    workers: usize,
    /// At least one: the first is opened with the pool, so that a model the backend refuses fails
    /// here.
    sessions: Vec<Box<dyn Session>>,
}

impl Pool {
    /// Opens `model` (as [`open_session`]) for up to [`workers`] runs side by side.
    pub fn open(model: &[u8], options: &BackendOptions) -> Result<Pool> {
        let first = open_session(model, options)?;
        let workers = workers(options).max(1);
        Ok(Pool { model: (workers > 1).then(|| model.to_vec()), options: *options, workers, sessions: vec![first] })
    }

    /// The runs [`Pool::map`] makes side by side.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The graph outputs in file order, as [`Session::output_names`].
    pub fn output_names(&self) -> &[String] {
        self.sessions[0].output_names()
    }

    /// `job` on each of `items`, each with one of the sessions, the sessions working side by side;
    /// the results in the order of `items`. On an error the items not yet started are left, and
    /// the error is the one of the first failing item, as when run in order (items are started in
    /// order, so every item before it ran). A panic in a job is resumed here.
    pub fn map<T: Sync, R: Send>(&mut self, items: &[T], job: impl Fn(&mut dyn Session, &T) -> Result<R> + Sync) -> Result<Vec<R>> {
        let wanted = self.workers.min(items.len()).max(1);
        if let Some(model) = &self.model {
            while self.sessions.len() < wanted {
                self.sessions.push(open_session(model, &self.options)?);
            }
        }
        let sessions = &mut self.sessions[..wanted];
        if let [session] = sessions {
            return items.iter().map(|item| job(session.as_mut(), item)).collect();
        }
        let (next, failed, job) = (&AtomicUsize::new(0), &AtomicBool::new(false), &job);
        let mut done: Vec<(usize, Result<R>)> = std::thread::scope(|scope| {
            let threads: Vec<_> = sessions
                .iter_mut()
                .map(|session| {
                    scope.spawn(move || {
                        let mut done = Vec::new();
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(item) = items.get(i) else { break };
                            let result = job(session.as_mut(), item);
                            failed.fetch_or(result.is_err(), Ordering::Relaxed);
                            done.push((i, result));
                        }
                        done
                    })
                })
                .collect();
            threads.into_iter().flat_map(|thread| thread.join().unwrap_or_else(|panic| resume_unwind(panic))).collect()
        });
        done.sort_unstable_by_key(|(i, _)| *i);
        let results = done.into_iter().map(|(_, result)| result).collect::<Result<Vec<R>>>()?;
        if results.len() != items.len() {
            return Err(Error::Internal(format!("{} of {} independent runs came back", results.len(), items.len())));
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn model() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/models/tiny_cnn_cifar10.onnx")).unwrap()
    }

    fn tract(threads: usize) -> BackendOptions {
        BackendOptions { threads: Some(threads), ..BackendOptions::default() }
    }

    #[test]
    fn backend_pool_workers_follow_threads_on_tract_only() {
        assert_eq!(workers(&tract(3)), 3);
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(workers(&BackendOptions::default()), cores);
        assert_eq!(workers(&BackendOptions { kind: BackendKind::Ort, threads: Some(4), ..BackendOptions::default() }), 1);
    }

    /// Batches of one image each, of distinct values, run in parallel and in order: the same
    /// logits bit for bit, in the order of the items.
    #[test]
    fn backend_pool_runs_in_parallel_as_in_order() {
        let batches: Vec<Tensor> =
            (0..7).map(|b| Tensor::F32(ndarray::ArrayD::from_shape_fn(vec![1 + b % 3, 3, 32, 32], |i| ((i[1] * 7 + i[2] + i[3] * 3 + b) % 11) as f32 / 11.0))).collect();
        let run = |threads: usize| {
            let mut pool = Pool::open(&model(), &tract(threads)).unwrap();
            pool.map(&batches, |session, batch| Ok(session.run(&[("input", batch)])?.remove(0))).unwrap()
        };
        let sequential = run(1);
        assert_eq!(sequential.len(), 7);
        assert_eq!(run(3), sequential);
        assert_eq!(run(2), sequential);
    }

    /// The error is the first failing item's, as in order, and items after it may be left.
    #[test]
    fn backend_pool_returns_the_first_error_in_item_order() {
        let items: Vec<usize> = (0..40).collect();
        for threads in [1, 2, 4] {
            let mut pool = Pool::open(&model(), &tract(threads)).unwrap();
            let error = pool
                .map(&items, |_, &i| if i % 10 == 7 { Err(Error::Internal(format!("item {i}"))) } else { Ok(i) })
                .unwrap_err();
            assert_eq!(error.to_string(), "internal error: item 7");
            assert_eq!(pool.map(&items, |_, &i| Ok(i * 2)).unwrap(), items.iter().map(|i| i * 2).collect::<Vec<_>>());
            assert!(pool.map(&[] as &[usize], |_, &i| Ok(i)).unwrap().is_empty());
        }
    }
}
