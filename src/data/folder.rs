//! Image folders, `<split>/<class>/*.{jpg,jpeg,png}`, decoded in parallel to 8-bit RGB.
//!
//! JPEG files go through libjpeg-turbo's own decoder (built from source by the `mozjpeg` crate,
//! without SIMD): it gives the same pixels as PIL, whose decoding defined the figures this tool
//! must reproduce, where the pure-Rust decoders differ by a few levels on a fifth of the values.
//! PNG files go through the `image` crate (lossless, so every decoder agrees).

use std::io::{BufRead, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Dataset, Images, Split};
use crate::error::{Error, Result};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Largest image accepted (64 Mpx), checked from the header before the pixels are allocated.
const MAX_PIXELS: usize = 1 << 26;

/// Height, width and `h×w×3` RGB values of a decoded image.
type Decoded = (usize, usize, Vec<u8>);

/// Whether `dir` has a visible sub-folder: the evidence for this layout.
pub(super) fn has_class_folders(dir: &Path) -> bool {
    visible_entries(dir).is_ok_and(|entries| entries.iter().any(|p| p.is_dir()))
}

/// Entries of `dir` not starting with '.', sorted by name (byte order, as Python sorts names).
fn visible_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.file_name().as_encoded_bytes().starts_with(b".") {
            entries.push(entry.path());
        }
    }
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(entries)
}

/// The class folders of `split` must be those of the other split, when it has any: a class index
/// is a folder's position, so a renamed, missing or extra folder would silently relabel images.
fn check_other_split(root: &Path, split: Split, class_dirs: &[PathBuf]) -> Result<()> {
    let other = match split {
        Split::Train => Split::Test,
        Split::Test => Split::Train,
    };
    let other_dir = root.join(other.name());
    if !has_class_folders(&other_dir) {
        return Ok(());
    }
    let names = |dirs: &[PathBuf]| -> Vec<String> { dirs.iter().filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned())).collect() };
    let mine = names(class_dirs);
    let theirs = names(&visible_entries(&other_dir)?.into_iter().filter(|p| p.is_dir()).collect::<Vec<_>>());
    if mine == theirs {
        return Ok(());
    }
    let only = |a: &[String], b: &[String]| a.iter().filter(|n| !b.contains(n)).cloned().collect::<Vec<_>>().join(", ");
    Err(Error::data(
        root,
        format!(
            "the class folders of {split} and {other} differ (only in {split}: [{}]; only in {other}: [{}]); a class index is the \
             position of its folder, so both splits must have the same folders",
            only(&mine, &theirs),
            only(&theirs, &mine)
        ),
    ))
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Loads every image of `root/<split>`; the class index is the position of the class folder
/// among the sorted (visible) folders, empty ones included, and files keep name order.
pub(super) fn load(root: &Path, split: Split) -> Result<Dataset> {
    let dir = root.join(split.name());
    let class_dirs = class_folders(&dir)?;
    check_other_split(root, split, &class_dirs)?;
    load_classes(&dir, &class_dirs)
}

/// The visible sub-folders of `dir`, sorted by name.
pub(super) fn class_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(visible_entries(dir)?.into_iter().filter(|p| p.is_dir()).collect())
}

/// Loads every image of `dir/<class>/` for the folders `class_dirs` (in that order: a folder's
/// position is its class index).
pub(super) fn load_classes(dir: &Path, class_dirs: &[PathBuf]) -> Result<Dataset> {
    let (mut files, mut labels) = (Vec::new(), Vec::new());
    for (label, class_dir) in class_dirs.iter().enumerate() {
        for file in visible_entries(class_dir)?.into_iter().filter(|f| is_image(f) && f.is_file()) {
            files.push(file);
            labels.push(label as i64);
        }
    }
    let Some(first) = files.first() else {
        return Err(Error::data(dir, "no images found under this folder (expected <class>/*.jpg, *.jpeg or *.png)"));
    };
    let (h, w, first_pixels) = decode_rgb(first, None)?;
    let per_image = first_pixels.len();
    let total = per_image.saturating_mul(files.len());
    let mut data = Vec::new();
    data.try_reserve_exact(total).map_err(|_| {
        Error::data(dir, format!("{} images of {w}×{h} pixels are more than this machine can hold", files.len()))
    })?;
    data.extend_from_slice(&first_pixels);
    data.resize(total, 0);
    data[per_image..].par_chunks_mut(per_image).zip(files[1..].par_iter()).try_for_each(|(dst, path)| {
        let (_, _, pixels) = decode_rgb(path, Some((h, w, first)))?;
        dst.copy_from_slice(&pixels);
        Ok::<(), Error>(())
    })?;
    let classes = class_dirs.iter().map(|d| d.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    Ok(Dataset { images: Images::U8Hwc { data, n: files.len(), h, w, c: 3 }, labels, classes, source: dir.to_path_buf() })
}

/// Decodes `path` to RGB; with `expected` = (h, w, file), an image of another size is an error
/// that names both files.
fn decode_rgb(path: &Path, expected: Option<(usize, usize, &Path)>) -> Result<Decoded> {
    let bytes = crate::onnx::io::read_input(path, crate::onnx::io::IMAGE_LIMIT)?;
    let check = |h: usize, w: usize| -> std::result::Result<(), String> {
        if h == 0 || w == 0 || h.saturating_mul(w) > MAX_PIXELS {
            return Err(format!("image of {w}×{h} pixels is outside the supported sizes (1 to {MAX_PIXELS} pixels)"));
        }
        match expected {
            Some((eh, ew, first)) if (eh, ew) != (h, w) => Err(format!(
                "image is {w}×{h} pixels, {} is {ew}×{eh}: all images must have the same size",
                first.display()
            )),
            _ => Ok(()),
        }
    };
    let decoded = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) { decode_jpeg(&bytes, &check) } else { decode_other(&bytes, &check) };
    decoded.map_err(|message| Error::data(path, message))
}

/// libjpeg-turbo's decoding with its defaults (integer IDCT, fancy upsampling), as PIL uses it.
/// libjpeg reports fatal errors by unwinding (without the panic hook), caught here; a file that
/// ends early, which libjpeg only warns about, is an error as in PIL.
fn decode_jpeg(bytes: &[u8], check: &dyn Fn(usize, usize) -> std::result::Result<(), String>) -> std::result::Result<Decoded, String> {
    let decode = || -> std::result::Result<Decoded, String> {
        let header = mozjpeg::Decompress::new_reader(EndWatch { rest: bytes, ran_out: false }).map_err(|e| e.to_string())?;
        let (h, w) = (header.height(), header.width());
        check(h, w)?;
        let mut started = header.rgb().map_err(|e| e.to_string())?;
        let pixels: Vec<u8> = started.read_scanlines().map_err(|e| e.to_string())?;
        let source = started.finish_into_inner().map_err(|e| e.to_string())?;
        if source.ran_out {
            return Err("the JPEG data is truncated".into());
        }
        Ok((h, w, pixels))
    };
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(result) => result,
        Err(payload) => Err(payload.downcast::<String>().map_or_else(|_| "libjpeg failed".to_string(), |m| *m)),
    }
}

/// Any other format the `image` crate reads (PNG here), with its default allocation limit.
fn decode_other(bytes: &[u8], check: &dyn Fn(usize, usize) -> std::result::Result<(), String>) -> std::result::Result<Decoded, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let image = reader.decode().map_err(|e| e.to_string())?.to_rgb8();
    let (h, w) = (image.height() as usize, image.width() as usize);
    check(h, w)?;
    Ok((h, w, image.into_raw()))
}

/// The file's bytes, remembering whether the decoder asked for more than there is: libjpeg then
/// pads the data with an end marker and goes on, so only this tells a truncated file.
struct EndWatch<'a> {
    rest: &'a [u8],
    ran_out: bool,
}

impl Read for EndWatch<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.read(buf)?;
        self.ran_out |= n == 0 && !buf.is_empty();
        Ok(n)
    }
}

impl BufRead for EndWatch<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.ran_out |= self.rest.is_empty();
        Ok(self.rest)
    }

    fn consume(&mut self, amount: usize) {
        self.rest = &self.rest[amount.min(self.rest.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::{read_npz, NpyData};
    use crate::data::{load_split, DataFormat, ImageRef};

    fn write_png(path: &Path, w: u32, h: u32, value: u8) {
        image::RgbImage::from_pixel(w, h, image::Rgb([value, value / 2, 255 - value])).save(path).unwrap();
    }

    /// Our decoding of the blur reference's clean images (PIL's decoding of the sorted CIFAR-10
    /// test set at positions `index`) where `position` places them in `data`; returns how many were
    /// compared.
    fn assert_decoded_as_pil(data: &Dataset, position: impl Fn(usize) -> Option<usize>) -> usize {
        let reference = read_npz(&crate::test_support::fixture("reference/blur_reference.npz")).unwrap();
        let (NpyData::I64(index), NpyData::U8(clean)) = (&reference["index"].data, &reference["clean"].data) else {
            panic!("reference dtypes")
        };
        let mut compared = 0;
        for (k, &i) in index.iter().enumerate() {
            let Some(at) = position(i as usize) else { continue };
            let ImageRef::U8Hwc(ours) = data.images.image(at) else { panic!("layout") };
            assert!(ours == &clean[k * 3072..(k + 1) * 3072], "image {i} differs from PIL's decoding");
            compared += 1;
        }
        compared
    }

    #[test]
    fn decodes_the_test_set_exactly_as_pil() {
        let Some(root) = crate::test_support::shared_or_skip("data/cifar10-jpg") else { return };
        let started = std::time::Instant::now();
        let data = load_split(&root, Split::Test, DataFormat::Auto).unwrap();
        eprintln!("loaded {} test images in {:?}", data.len(), started.elapsed());
        assert_eq!((data.len(), data.images.height(), data.images.width(), data.images.channels()), (10_000, 32, 32, 3));
        assert_eq!(data.classes.first().map(String::as_str), Some("airplane"));
        assert_eq!(data.classes.last().map(String::as_str), Some("truck"));
        assert!((0..10).all(|c| data.labels.iter().filter(|&&l| l == c).count() == 1000));
        assert_eq!(assert_decoded_as_pil(&data, Some), 50);
    }

    /// The bundled subset holds the first 50 test images of each class: the reference images
    /// among them (the first of each class) decode as PIL decodes them.
    #[test]
    fn decodes_the_bundled_test_images_exactly_as_pil() {
        let data = load_split(&crate::test_support::fixture("cifar10-mini"), Split::Test, DataFormat::Auto).unwrap();
        assert_eq!(data.len(), 500);
        assert_eq!(assert_decoded_as_pil(&data, crate::test_support::mini_test_position), 10);
    }

    #[test]
    fn folders_sort_classes_and_files_and_skip_hidden_entries() {
        let root = tempfile::tempdir().unwrap();
        for (class, files) in [("zebra", &["b.png", "a.PNG"][..]), ("ant", &["x.png"]), (".cache", &["y.png"])] {
            let dir = root.path().join("train").join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, name) in files.iter().enumerate() {
                write_png(&dir.join(name), 3, 2, 10 * (i as u8 + 1));
            }
        }
        std::fs::create_dir(root.path().join("train/empty")).unwrap();
        std::fs::write(root.path().join("train/zebra/notes.txt"), "not an image").unwrap();

        let data = load_split(root.path(), Split::Train, DataFormat::Auto).unwrap();
        assert_eq!(data.classes, ["ant", "empty", "zebra"]);
        assert_eq!(data.labels, [0, 2, 2]);
        // zebra/a.PNG (written second, value 20) sorts before zebra/b.png (value 10).
        let ImageRef::U8Hwc(first_zebra) = data.images.image(1) else { panic!("layout") };
        assert_eq!(&first_zebra[..3], &[20, 10, 235]);
        assert_eq!((data.images.height(), data.images.width()), (2, 3));
    }

    #[test]
    fn bad_folders_give_errors_that_name_the_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("test/cat");
        std::fs::create_dir_all(&dir).unwrap();
        let empty = load_split(root.path(), Split::Test, DataFormat::Folder).unwrap_err().to_string();
        assert!(empty.contains("no images found under"), "{empty}");

        write_png(&dir.join("1.png"), 4, 4, 0);
        write_png(&dir.join("2.png"), 5, 4, 0);
        let size = load_split(root.path(), Split::Test, DataFormat::Folder).unwrap_err().to_string();
        assert!(size.contains("2.png") && size.contains("same size"), "{size}");

        std::fs::remove_file(dir.join("1.png")).unwrap();
        std::fs::remove_file(dir.join("2.png")).unwrap();
        let jpeg = std::fs::read(crate::test_support::fixture("cifar10-mini/test/cat/0000.jpg")).unwrap();
        std::fs::write(dir.join("3.jpg"), &jpeg[..jpeg.len() - 100]).unwrap();
        let truncated = load_split(root.path(), Split::Test, DataFormat::Folder).unwrap_err().to_string();
        assert!(truncated.contains("3.jpg") && truncated.contains("truncated"), "{truncated}");

        std::fs::write(dir.join("3.jpg"), [&jpeg[..20], &[0u8; 200][..]].concat()).unwrap();
        let corrupt = load_split(root.path(), Split::Test, DataFormat::Folder).unwrap_err().to_string();
        assert!(corrupt.contains("3.jpg"), "{corrupt}");

        std::fs::write(dir.join("3.jpg"), b"plain text").unwrap();
        let garbage = load_split(root.path(), Split::Test, DataFormat::Folder).unwrap_err().to_string();
        assert!(garbage.contains("3.jpg"), "{garbage}");
    }

    #[test]
    fn jpeg_size_is_checked_before_decoding() {
        let jpeg = std::fs::read(crate::test_support::fixture("cifar10-mini/test/cat/0000.jpg")).unwrap();
        let refuse = |h: usize, w: usize| -> std::result::Result<(), String> { Err(format!("refused {w}×{h}")) };
        assert_eq!(decode_jpeg(&jpeg, &refuse).unwrap_err(), "refused 32×32");
        let (h, w, pixels) = decode_jpeg(&jpeg, &|_, _| Ok(())).unwrap();
        assert_eq!((h, w, pixels.len()), (32, 32, 3072));
    }
}
