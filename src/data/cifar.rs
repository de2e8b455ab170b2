//! CIFAR-10 and CIFAR-100 in their binary distributions: fixed-size records of label byte(s)
//! followed by the 32×32 red, green and blue planes.

use std::path::{Path, PathBuf};

use super::{Dataset, Images, Split};
use crate::error::{Error, Result};

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;

/// Which of the two distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Cifar10,
    Cifar100,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cifar10 => "CIFAR-10",
            Kind::Cifar100 => "CIFAR-100",
        }
    }

    /// The folder the archive unpacks to, looked for under the data root.
    fn folder(self) -> &'static str {
        match self {
            Kind::Cifar10 => "cifar-10-batches-bin",
            Kind::Cifar100 => "cifar-100-binary",
        }
    }

    fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (Kind::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Kind::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (Kind::Cifar100, split) => vec![format!("{}.bin", split.name())],
        }
    }

    /// Label bytes before the pixels; the last one is the label used (CIFAR-100: the fine one).
    fn label_bytes(self) -> usize {
        match self {
            Kind::Cifar10 => 1,
            Kind::Cifar100 => 2,
        }
    }

    fn classes(self) -> usize {
        match self {
            Kind::Cifar10 => 10,
            Kind::Cifar100 => 100,
        }
    }

    /// The class names, one a line, shipped with the binary files.
    fn names_file(self) -> &'static str {
        match self {
            Kind::Cifar10 => "batches.meta.txt",
            Kind::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// The folder holding the first file of `split`: `root` itself or the archive's folder in it.
pub(super) fn find(root: &Path, split: Split, kind: Kind) -> Option<PathBuf> {
    let first = kind.files(split).into_iter().next()?;
    [root.to_path_buf(), root.join(kind.folder())].into_iter().find(|dir| dir.join(&first).is_file())
}

pub(super) fn load(root: &Path, split: Split, kind: Kind) -> Result<Dataset> {
    let files = kind.files(split);
    let dir = find(root, split, kind).ok_or_else(|| {
        Error::data(root, format!("no {} {split} files ({}) here or in {}/", kind.name(), files.join(", "), kind.folder()))
    })?;
    let record = kind.label_bytes() + 3 * PLANE;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for name in &files {
        let path = dir.join(name);
        let bytes = crate::onnx::io::read_input(&path, crate::onnx::io::ARRAY_LIMIT)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::data(&path, format!("{} bytes are not a whole number of {record}-byte records", bytes.len())));
        }
        pixels.reserve(bytes.len() / record * 3 * PLANE);
        for (r, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[kind.label_bytes() - 1];
            if usize::from(label) >= kind.classes() {
                return Err(Error::data(&path, format!("record {r}: label {label} is not below {}", kind.classes())));
            }
            labels.push(i64::from(label));
            let planes = &rec[kind.label_bytes()..];
            pixels.extend((0..PLANE).flat_map(|p| [planes[p], planes[PLANE + p], planes[2 * PLANE + p]]));
        }
    }
    let classes = class_names(&dir.join(kind.names_file()), kind.classes())?;
    let n = labels.len();
    Ok(Dataset { images: Images::U8Hwc { data: pixels, n, h: SIDE, w: SIDE, c: 3 }, labels, classes, source: dir })
}

/// Names from `path` when it exists (blank lines ignored), else the class indices.
fn class_names(path: &Path, count: usize) -> Result<Vec<String>> {
    if !path.is_file() {
        return Ok((0..count).map(|c| c.to_string()).collect());
    }
    let text = crate::onnx::io::read_text(path, crate::onnx::io::TEXT_LIMIT)?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if names.len() != count {
        return Err(Error::data(path, format!("{} class names, expected {count}", names.len())));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load_split, DataFormat, ImageRef};

    /// A record whose red plane is `r`, green `g`, blue `b` everywhere but pixel 1 (x=1, y=0),
    /// which is (1, 2, 3).
    fn record(labels: &[u8], [r, g, b]: [u8; 3]) -> Vec<u8> {
        let mut out = labels.to_vec();
        for (value, marker) in [(r, 1), (g, 2), (b, 3)] {
            let mut plane = vec![value; PLANE];
            plane[1] = marker;
            out.extend(plane);
        }
        out
    }

    #[test]
    fn cifar10_records_become_rgb_pixels() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&dir).unwrap();
        let bytes = [record(&[7], [10, 20, 30]), record(&[0], [40, 50, 60])].concat();
        std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
        let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
        std::fs::write(dir.join("batches.meta.txt"), names).unwrap();

        let data = load_split(root.path(), Split::Test, DataFormat::Auto).unwrap();
        assert_eq!(data.labels, vec![7, 0]);
        assert_eq!(data.classes[9], "truck");
        let ImageRef::U8Hwc(second) = data.images.image(1) else { panic!("layout") };
        assert_eq!(&second[..6], &[40, 50, 60, 1, 2, 3]);
        assert_eq!(second.len(), 3072);

        let missing = load_split(root.path(), Split::Train, DataFormat::Cifar10).unwrap_err().to_string();
        assert!(missing.contains("data_batch_1.bin"), "{missing}");
    }

    #[test]
    fn cifar100_uses_the_fine_label() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("train.bin"), record(&[3, 99], [1, 1, 1])).unwrap();
        let data = load_split(root.path(), Split::Train, DataFormat::Auto).unwrap();
        assert_eq!((data.labels.clone(), data.classes.len()), (vec![99], 100));
        assert_eq!(data.classes[99], "99");
    }

    #[test]
    fn broken_files_are_named() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("test_batch.bin");
        std::fs::write(&path, &record(&[1], [0, 0, 0])[..3000]).unwrap();
        let short = load_split(root.path(), Split::Test, DataFormat::Cifar10).unwrap_err().to_string();
        assert!(short.contains("test_batch.bin") && short.contains("3000 bytes"), "{short}");
        std::fs::write(&path, record(&[12], [0, 0, 0])).unwrap();
        let label = load_split(root.path(), Split::Test, DataFormat::Cifar10).unwrap_err().to_string();
        assert!(label.contains("label 12"), "{label}");
    }
}
