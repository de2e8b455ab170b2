//! Checkpoints of a training run, in the run folder: after every epoch the current replacement
//! weights, their momentum buffers, the best epoch's weights and the log so far. Files of an epoch
//! are written first and `checkpoint.json`, which names them, last (atomically), so an interruption at
//! any moment leaves the previous checkpoint whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::EpochRecord;
use crate::data::npy::{read_npz, write_npz, NpyArray, NpyData};
use crate::error::{Error, Result};
use crate::onnx::io::{sha256_of_files, write_atomically};
use crate::units::PatchSpec;

/// Version of the checkpoint's form.
const FORMAT: u32 = 1;

/// What `checkpoint.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: u32,
    /// What the run is (model, blamed filters, data, settings other than the number of epochs): a
    /// checkpoint of another run is never resumed.
    pub identity: String,
    /// Epochs finished.
    pub epochs_done: usize,
    /// Correct predictions of the original model on T_val° and its size.
    pub original_correct: usize,
    pub val_images: usize,
    /// The best epoch so far (1-based) and its correct predictions on T_val°.
    pub best_epoch: Option<usize>,
    pub best_correct: usize,
    pub records: Vec<EpochRecord>,
    /// Factor on the scheduled learning rate, lowered by each recovery from a diverging loss.
    #[serde(default = "unit_scale")]
    pub learning_rate_scale: f64,
    /// One line per recovery from a diverging loss.
    #[serde(default)]
    pub recoveries: Vec<String>,
    /// The initial learning rate once chosen (`learning_rate: auto`: by the trials below).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    #[serde(default)]
    pub learning_rate_trials: Vec<super::RateTrial>,
    /// Files of this checkpoint, relative to the run folder.
    pub current: String,
    pub momentum: String,
    pub best: String,
    /// SHA-256 of those files (with the specs' arrays), checked before a resume.
    #[serde(default)]
    pub sha256: String,
}

impl Checkpoint {
    /// The files this checkpoint refers to, in the order of its digest.
    fn files(&self, run: &Path) -> Vec<PathBuf> {
        let (current, best) = (run.join(&self.current), run.join(&self.best));
        vec![crate::units::spec::weights_path(&current), current, crate::units::spec::weights_path(&best), best, run.join(&self.momentum)]
    }
}

fn unit_scale() -> f64 {
    1.0
}

/// A checkpoint with its arrays.
pub struct Saved {
    pub checkpoint: Checkpoint,
    pub current: PatchSpec,
    /// Momentum buffers by parameter key (`layer<i>.weight`, `layer<i>.bias`).
    pub momentum: BTreeMap<String, ArrayD<f32>>,
    pub best: PatchSpec,
}

fn index_path(run: &Path) -> PathBuf {
    run.join("checkpoint.json")
}

/// Writes the checkpoint of epoch `checkpoint.epochs_done` and removes the previous epoch's files.
pub fn save(run: &Path, mut checkpoint: Checkpoint, current: &PatchSpec, momentum: &BTreeMap<String, ArrayD<f32>>, best: &PatchSpec) -> Result<()> {
    let folder = run.join("checkpoints");
    std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let epoch = checkpoint.epochs_done;
    let previous = load_index(run)?;
    checkpoint.format = FORMAT;
    checkpoint.current = format!("checkpoints/current-{epoch}.json");
    checkpoint.momentum = format!("checkpoints/momentum-{epoch}.npz");
    checkpoint.best = format!("checkpoints/best-{epoch}.json");
    current.save(&run.join(&checkpoint.current))?;
    best.save(&run.join(&checkpoint.best))?;
    let arrays: BTreeMap<String, NpyArray> = momentum
        .iter()
        .map(|(key, a)| (key.clone(), NpyArray { shape: a.shape().to_vec(), data: NpyData::F32(a.iter().copied().collect()) }))
        .collect();
    write_npz(&run.join(&checkpoint.momentum), &arrays)?;
    checkpoint.sha256 = sha256_of_files(&checkpoint.files(run))?;
    let json = serde_json::to_string_pretty(&checkpoint).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomically(&index_path(run), format!("{json}\n").as_bytes())?;
    if let Some(previous) = previous.filter(|p| p.epochs_done != epoch) {
        for file in [&previous.current, &previous.best] {
            let spec = run.join(file);
            let _ = std::fs::remove_file(crate::units::spec::weights_path(&spec));
            let _ = std::fs::remove_file(spec);
        }
        let _ = std::fs::remove_file(run.join(&previous.momentum));
    }
    Ok(())
}

fn load_index(run: &Path) -> Result<Option<Checkpoint>> {
    let path = index_path(run);
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::onnx::io::read_text(&path, crate::onnx::io::TEXT_LIMIT)?;
    let checkpoint: Checkpoint = serde_json::from_str(&text).map_err(|e| Error::data(&path, format!("not a checkpoint: {e}")))?;
    if checkpoint.format != FORMAT {
        return Err(Error::data(&path, format!("checkpoint format {} is not supported (expected {FORMAT})", checkpoint.format)));
    }
    Ok(Some(checkpoint))
}

/// The run folder's checkpoint, if it has one of this run. A folder holding another run (other
/// model, filters, data or settings) is moved aside to `<run>.previous-<n>` and `None` returned, so
/// that changed settings start afresh without losing the earlier run.
pub fn load(run: &Path, identity: &str) -> Result<Option<Saved>> {
    let set_aside_because = |why: &str| -> Result<Option<Saved>> {
        let aside = set_aside(run)?;
        crate::progress::info(&format!("{} {why}: moved to {}, training afresh", run.display(), aside.display()));
        Ok(None)
    };
    let checkpoint = match load_index(run) {
        Ok(Some(checkpoint)) if checkpoint.identity == identity => checkpoint,
        Ok(None) => return Ok(None),
        Ok(Some(_)) | Err(_) => return set_aside_because("holds another training run (other model, filters, data or settings)"),
    };
    if sha256_of_files(&checkpoint.files(run)).ok().as_deref() != Some(checkpoint.sha256.as_str()) {
        return set_aside_because("holds a damaged checkpoint (its files do not match their recorded SHA-256)");
    }
    let current = PatchSpec::load(&run.join(&checkpoint.current))?;
    let best = PatchSpec::load(&run.join(&checkpoint.best))?;
    let momentum_path = run.join(&checkpoint.momentum);
    let momentum = read_npz(&momentum_path)?
        .into_iter()
        .map(|(key, array)| match array.data {
            NpyData::F32(values) => ArrayD::from_shape_vec(IxDyn(&array.shape), values)
                .map(|a| (key.clone(), a))
                .map_err(|e| Error::data(&momentum_path, format!("{key}: {e}"))),
            other => Err(Error::data(&momentum_path, format!("{key}: expected float32, found {}", other.descr()))),
        })
        .collect::<Result<_>>()?;
    Ok(Some(Saved { checkpoint, current, momentum, best }))
}

/// Renames `folder` to the first free `<folder>.previous-<n>` and returns the new path.
pub fn set_aside(folder: &Path) -> Result<PathBuf> {
    let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    let target = (1..)
        .map(|n| folder.with_file_name(format!("{name}.previous-{n}")))
        .find(|candidate| !candidate.exists())
        .ok_or_else(|| Error::Internal("no free name".into()))?;
    std::fs::rename(folder, &target).map_err(|e| Error::io(folder, e))?;
    Ok(target)
}
