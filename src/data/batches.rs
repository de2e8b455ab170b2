//! Batches prepared on a background thread while the consumer (an inference backend) computes,
//! so corruption and preprocessing never leave the backend waiting.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use ndarray::ArrayD;

use super::preprocess::{make_mixed_batch, Corruption, Preprocess};
use super::Dataset;
use crate::error::{Error, Result};

/// Batches kept ready ahead of the consumer: one being consumed, two waiting.
const DEPTH: usize = 2;

/// One model input with what it holds.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input: ArrayD<f32>,
    pub labels: Vec<i64>,
    /// Positions of the images in the data set.
    pub indices: Vec<usize>,
    /// Position of the batch's level in the list given to [`BatchStream::new`] (0 for
    /// [`BatchStream::mixed`] batches).
    pub corruption: usize,
}

/// Walks levels in batches, each level's images in turn (all batches of the first level, then the
/// second, ...), each image with its own corruption. Iterating yields the batches in that order; an
/// error ends the stream after it is yielded. Dropping the stream stops the producer.
pub struct BatchStream {
    receiver: Option<Receiver<Result<Batch>>>,
    producer: Option<JoinHandle<()>>,
    /// An error found before any batch could be produced.
    failed: Option<Error>,
}

impl BatchStream {
    /// Starts producing batches of `batch_size` of each level of `levels`, (image index, corruption)
    /// pairs; `Batch::corruption` is the level's position. A batch never spans two levels.
    pub fn new(data: Arc<Dataset>, levels: Vec<Vec<(usize, Corruption)>>, preprocess: Preprocess, batch_size: usize) -> BatchStream {
        BatchStream::spawn(batch_size, move |sender| {
            for (position, items) in levels.iter().enumerate() {
                for chunk in items.chunks(batch_size) {
                    let batch = make_mixed_batch(&data, chunk, &preprocess).map(|input| Batch {
                        input,
                        labels: chunk.iter().map(|&(i, _)| data.labels[i]).collect(),
                        indices: chunk.iter().map(|&(i, _)| i).collect(),
                        corruption: position,
                    });
                    if !deliver(sender, batch) {
                        return;
                    }
                }
            }
        })
    }

    /// One level: the batches of `items` (a training epoch's draw); `Batch::corruption` is 0.
    pub fn mixed(data: Arc<Dataset>, items: Vec<(usize, Corruption)>, preprocess: Preprocess, batch_size: usize) -> BatchStream {
        BatchStream::new(data, vec![items], preprocess, batch_size)
    }

    /// Runs `produce` on the producer thread.
    fn spawn(batch_size: usize, produce: impl FnOnce(&SyncSender<Result<Batch>>) + Send + 'static) -> BatchStream {
        if batch_size == 0 {
            return BatchStream::failed(Error::Config("batch size must be at least 1".into()));
        }
        let (sender, receiver) = sync_channel(DEPTH);
        let spawned = std::thread::Builder::new().name("deeppatch-batches".into()).spawn(move || produce(&sender));
        match spawned {
            Ok(handle) => BatchStream { receiver: Some(receiver), producer: Some(handle), failed: None },
            Err(e) => BatchStream::failed(Error::Internal(format!("cannot start the batch thread: {e}"))),
        }
    }

    fn failed(error: Error) -> BatchStream {
        BatchStream { receiver: None, producer: None, failed: Some(error) }
    }
}

/// Sends one batch; false when the producer must stop (the stream was dropped, or this was an
/// error, which ends the stream).
fn deliver(sender: &SyncSender<Result<Batch>>, batch: Result<Batch>) -> bool {
    let failed = batch.is_err();
    sender.send(batch).is_ok() && !failed
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if let Some(error) = self.failed.take() {
            return Some(Err(error));
        }
        match self.receiver.as_ref()?.recv() {
            Ok(batch) => Some(batch),
            Err(_) => {
                // The producer is done; a panic there must not pass for the end of the data.
                self.receiver = None;
                match self.producer.take().map(JoinHandle::join) {
                    Some(Err(_)) => Some(Err(Error::Internal("the batch producer panicked".into()))),
                    _ => None,
                }
            }
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Closing the channel first makes the producer's next send fail, so the join is short.
        self.receiver = None;
        if let Some(handle) = self.producer.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::data::{make_batch, Images};

    fn data(n: usize) -> Arc<Dataset> {
        Arc::new(Dataset {
            images: Images::U8Hwc { data: (0..n * 4 * 4 * 3).map(|i| (i % 251) as u8).collect(), n, h: 4, w: 4, c: 3 },
            labels: (0..n as i64).map(|i| i % 3).collect(),
            classes: vec!["a".into(), "b".into(), "c".into()],
            source: PathBuf::from("memory"),
        })
    }

    #[test]
    fn walks_every_corruption_in_batches() {
        let data = data(12);
        let indices: Vec<usize> = (0..10).rev().collect();
        let corruptions = [Corruption::Clean, Corruption::Blur(1.0)];
        let levels = corruptions.iter().map(|c| indices.iter().map(|&i| (i, c.clone())).collect()).collect();
        let stream = BatchStream::new(data.clone(), levels, Preprocess::default(), 4);
        let batches: Vec<Batch> = stream.collect::<Result<_>>().unwrap();
        let shape: Vec<(usize, usize)> = batches.iter().map(|b| (b.corruption, b.labels.len())).collect();
        assert_eq!(shape, [(0, 4), (0, 4), (0, 2), (1, 4), (1, 4), (1, 2)]);
        let last = &batches[5];
        assert_eq!(last.indices, [1, 0]);
        assert_eq!(last.labels, [1, 0]);
        assert_eq!(last.input, make_batch(&data, &[1, 0], &corruptions[1], &Preprocess::default()).unwrap());
    }

    #[test]
    fn mixed_batches_corrupt_each_image_as_drawn() {
        let data = data(6);
        let items: Vec<(usize, Corruption)> =
            vec![(5, Corruption::Clean), (2, Corruption::Blur(1.0)), (0, Corruption::Blur(2.0)), (3, Corruption::Clean), (1, Corruption::Blur(1.0))];
        let batches: Vec<Batch> = BatchStream::mixed(data.clone(), items.clone(), Preprocess::default(), 3).collect::<Result<_>>().unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].indices, [3, 1]);
        assert_eq!(batches[1].labels, [0, 1]);
        for (position, (index, corruption)) in items.iter().enumerate() {
            let alone = make_batch(&data, &[*index], corruption, &Preprocess::default()).unwrap();
            let batch = &batches[position / 3].input;
            assert_eq!(batch.index_axis(ndarray::Axis(0), position % 3), alone.index_axis(ndarray::Axis(0), 0));
        }
    }

    #[test]
    fn errors_end_the_stream() {
        let wrong = Preprocess { mean: vec![0.0], std: vec![1.0], ..Preprocess::default() };
        let clean = || vec![(0..5).map(|i| (i, Corruption::Clean)).collect()];
        let mut stream = BatchStream::new(data(5), clean(), wrong, 2);
        assert!(matches!(stream.next(), Some(Err(Error::Config(_)))));
        assert!(stream.next().is_none());
        let mut empty = BatchStream::new(data(5), clean(), Preprocess::default(), 0);
        assert!(matches!(empty.next(), Some(Err(Error::Config(_)))));
        assert!(empty.next().is_none());
    }

    #[test]
    fn dropping_stops_the_producer() {
        let started = Instant::now();
        let levels = vec![(0..2000).map(|i| (i, Corruption::Blur(3.0))).collect(); 50];
        let mut stream = BatchStream::new(data(2000), levels, Preprocess::default(), 1);
        assert!(stream.next().is_some());
        drop(stream);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
}
