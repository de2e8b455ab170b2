//! numpy's NPY and NPZ array files: the exchange format of reference data, of `x.npy`/`y.npy`
//! data sets and of tools that compare against Python.
//!
//! Versions 1.0, 2.0 and 3.0 are read; little-endian `|u1 |b1 <i4 <i8 <f4 <f8` in C order. The
//! header's promised size is checked against the bytes present before anything is allocated for
//! the array, so a hostile header cannot ask for a huge buffer.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::onnx::io::write_atomically;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The elements of an array, one variant per supported dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    U8(Vec<u8>),
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::U8(v) => v.len(),
            NpyData::Bool(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype as numpy writes it in a header (`<f4`, `|u1`, ...).
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::U8(_) => "|u1",
            NpyData::Bool(_) => "|b1",
            NpyData::I32(_) => "<i4",
            NpyData::I64(_) => "<i8",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
        }
    }

    /// Decodes little-endian `bytes` of `dtype`, whose length the caller has checked.
    fn from_le_bytes(dtype: Dtype, bytes: &[u8]) -> NpyData {
        fn words<const N: usize, T>(bytes: &[u8], convert: fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|chunk| {
                    let mut word = [0u8; N];
                    word.copy_from_slice(chunk);
                    convert(word)
                })
                .collect()
        }
        match dtype {
            Dtype::U8 => NpyData::U8(bytes.to_vec()),
            Dtype::Bool => NpyData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            Dtype::I32 => NpyData::I32(words(bytes, i32::from_le_bytes)),
            Dtype::I64 => NpyData::I64(words(bytes, i64::from_le_bytes)),
            Dtype::F32 => NpyData::F32(words(bytes, f32::from_le_bytes)),
            Dtype::F64 => NpyData::F64(words(bytes, f64::from_le_bytes)),
        }
    }

    /// Appends the elements as little-endian bytes.
    fn write_le(&self, out: &mut Vec<u8>) {
        match self {
            NpyData::U8(v) => out.extend_from_slice(v),
            NpyData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            NpyData::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
}

/// The dtypes understood, with their element sizes.
#[derive(Debug, Clone, Copy)]
enum Dtype {
    U8,
    Bool,
    I32,
    I64,
    F32,
    F64,
}

impl Dtype {
    fn parse(descr: &str) -> std::result::Result<Dtype, String> {
        // One-byte types have no byte order; numpy writes '|' but '<', '>' and '=' mean the same.
        let one_byte = |d: &str| ["|", "<", ">", "="].iter().any(|p| descr == format!("{p}{d}"));
        Ok(match descr {
            _ if one_byte("u1") => Dtype::U8,
            _ if one_byte("b1") => Dtype::Bool,
            "<i4" => Dtype::I32,
            "<i8" => Dtype::I64,
            "<f4" => Dtype::F32,
            "<f8" => Dtype::F64,
            other => {
                return Err(format!(
                    "dtype '{other}' is not supported (supported: |u1, |b1, <i4, <i8, <f4, <f8)"
                ))
            }
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::Bool => 1,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }
}

/// An n-dimensional array in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// An array, checking that the shape holds exactly the elements given.
    pub fn new(shape: Vec<usize>, data: NpyData) -> Result<NpyArray> {
        let count = element_count(&shape).map_err(Error::Config)?;
        if count != data.len() {
            return Err(Error::Config(format!("shape {shape:?} holds {count} elements, {} given", data.len())));
        }
        Ok(NpyArray { shape, data })
    }

    /// Parses the bytes of an NPY file; the message says what is wrong, the caller says where.
    fn parse(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err("not an NPY file (bad magic string)".into());
        }
        let (major, minor) = (bytes[6], bytes[7]);
        let (header_len, header_start) = match major {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => {
                (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
            }
            _ => return Err(format!("NPY format version {major}.{minor} is not supported (1.0, 2.0, 3.0 are)")),
        };
        let data_start = header_start + header_len;
        let header = bytes.get(header_start..data_start).ok_or("the file ends inside its header")?;
        let header = std::str::from_utf8(header).map_err(|_| "the header is not text")?;
        let header = Header::parse(header)?;
        if header.fortran_order {
            return Err("arrays in Fortran order are not supported; save with C order (np.ascontiguousarray)".into());
        }
        let dtype = Dtype::parse(&header.descr)?;
        let expected = element_count(&header.shape)?
            .checked_mul(dtype.size())
            .ok_or_else(|| format!("shape {:?} is too large", header.shape))?;
        let payload = &bytes[data_start..];
        if payload.len() != expected {
            return Err(format!(
                "the header promises {expected} bytes of data (shape {:?}, dtype {}), the file holds {}",
                header.shape,
                header.descr,
                payload.len()
            ));
        }
        Ok(NpyArray { shape: header.shape, data: NpyData::from_le_bytes(dtype, payload) })
    }

    /// The NPY file bytes (version 1.0, or 2.0 when the header needs it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.as_slice() {
            [one] => format!("({one},)"),
            dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", self.data.descr());
        // numpy pads with spaces so that the data starts on a 64-byte boundary, then a newline;
        // version 2.0 only when the padded header outgrows version 1.0's 16-bit length.
        let padding = |prefix: usize| (64 - (prefix + header.len() + 1) % 64) % 64;
        let prefix = if header.len() + 1 + padding(10) <= usize::from(u16::MAX) { 10 } else { 12 };
        let padding = padding(prefix);
        header.extend(std::iter::repeat_n(' ', padding));
        header.push('\n');
        let mut out = Vec::with_capacity(prefix + header.len() + self.data.len() * 8);
        out.extend_from_slice(MAGIC);
        if prefix == 10 {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        self.data.write_le(&mut out);
        out
    }
}

/// Product of the dimensions, or a message when it overflows.
fn element_count(shape: &[usize]) -> std::result::Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))
}

/// The three keys of an NPY header, which is a Python dict literal.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    fn parse(text: &str) -> std::result::Result<Header, String> {
        let mut p = Literal { rest: text.trim() };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        p.expect('{')?;
        while !p.eat('}') {
            let key = p.string()?;
            p.expect(':')?;
            match key.as_str() {
                "descr" => descr = Some(p.string()?),
                "fortran_order" => fortran_order = Some(p.boolean()?),
                "shape" => shape = Some(p.tuple()?),
                other => return Err(format!("unexpected header key '{other}'")),
            }
            if !p.eat(',') {
                p.expect('}')?;
                break;
            }
        }
        match (descr, fortran_order, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header { descr, fortran_order, shape }),
            _ => Err("the header lacks one of 'descr', 'fortran_order', 'shape'".into()),
        }
    }
}

/// A cursor over the Python literal of an NPY header.
struct Literal<'a> {
    rest: &'a str,
}

impl Literal<'_> {
    /// Consumes `c` (after white space) if it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.rest = self.rest.trim_start();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed header: expected '{c}' at \"{}\"", self.rest.chars().take(20).collect::<String>()))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        self.rest = self.rest.trim_start();
        let quote = self.rest.chars().next().filter(|q| *q == '\'' || *q == '"').ok_or("malformed header: expected a string")?;
        let body = &self.rest[1..];
        let end = body.find(quote).ok_or("malformed header: unterminated string")?;
        self.rest = &body[end + 1..];
        Ok(body[..end].to_string())
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.rest = self.rest.trim_start();
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(rest) = self.rest.strip_prefix(word) {
                self.rest = rest;
                return Ok(value);
            }
        }
        Err("malformed header: expected True or False".into())
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        while !self.eat(')') {
            self.rest = self.rest.trim_start();
            let digits = self.rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(self.rest.len());
            let dim = self.rest[..digits].parse::<usize>().map_err(|_| "malformed header: bad shape")?;
            dims.push(dim);
            self.rest = &self.rest[digits..];
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        Ok(dims)
    }
}

/// Reads an NPY file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = crate::onnx::io::read_input(path, crate::onnx::io::ARRAY_LIMIT)?;
    NpyArray::parse(&bytes).map_err(|m| Error::data(path, m))
}

/// Writes an NPY file atomically (temporary file in the same folder, then rename).
pub fn write_npy(path: &Path, array: &NpyArray) -> Result<()> {
    write_atomically(path, &array.to_bytes())
}

/// Writes `arrays` as an NPZ file, uncompressed as `np.savez` writes it, atomically.
pub fn write_npz(path: &Path, arrays: &BTreeMap<String, NpyArray>) -> Result<()> {
    let failed = |e: zip::result::ZipError| Error::data(path, format!("cannot write the NPZ archive: {e}"));
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, array) in arrays {
        let bytes = array.to_bytes();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes.len() >= u32::MAX as usize);
        archive.start_file(format!("{name}.npy"), options).map_err(failed)?;
        archive.write_all(&bytes).map_err(|e| Error::io(path, e))?;
    }
    let bytes = archive.finish().map_err(failed)?.into_inner();
    write_atomically(path, &bytes)
}

/// Reads the arrays of an NPZ file (a zip of NPY files, stored or deflated), keyed by entry name
/// without `.npy`. Entries that are not `.npy` files are skipped, as they are no arrays.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>> {
    crate::onnx::io::regular_file_size(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::data(path, format!("not a readable NPZ (zip) file: {e}")))?;
    let mut arrays = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| Error::data(path, format!("zip entry {i}: {e}")))?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else { continue };
        // Grows with the bytes actually inflated, never with the size the entry claims.
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| Error::data(path, format!("entry '{name}.npy': {e}")))?;
        let array = NpyArray::parse(&bytes).map_err(|m| Error::data(path, format!("entry '{name}.npy': {m}")))?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> std::path::PathBuf {
        crate::test_support::fixture("reference")
    }

    #[test]
    fn round_trips_every_dtype() {
        let arrays = [
            NpyArray::new(vec![2, 3], NpyData::U8(vec![0, 1, 2, 253, 254, 255])).unwrap(),
            NpyArray::new(vec![3], NpyData::Bool(vec![true, false, true])).unwrap(),
            NpyArray::new(vec![2], NpyData::I32(vec![-7, i32::MAX])).unwrap(),
            NpyArray::new(vec![1, 2], NpyData::I64(vec![i64::MIN, 42])).unwrap(),
            NpyArray::new(vec![2, 1, 1], NpyData::F32(vec![1.5, -0.25])).unwrap(),
            NpyArray::new(vec![], NpyData::F64(vec![std::f64::consts::PI])).unwrap(),
            NpyArray::new(vec![0, 4], NpyData::F32(vec![])).unwrap(),
        ];
        for array in arrays {
            let bytes = array.to_bytes();
            let header_end = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
            assert_eq!(header_end % 64, 0, "data must start 64-byte aligned");
            assert_eq!(NpyArray::parse(&bytes).unwrap(), array);
        }
    }

    #[test]
    fn header_is_what_numpy_writes() {
        let bytes = NpyArray::new(vec![5], NpyData::I64(vec![0; 5])).unwrap().to_bytes();
        let text = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert_eq!(text.trim_end(), "{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }");
        assert!(text.ends_with("  \n"));
        assert_eq!(&bytes[6..10], &[1, 0, 118, 0]);
        assert_eq!(bytes.len(), 128 + 5 * 8);
    }

    #[test]
    fn reads_a_numpy_written_file() {
        let array = read_npy(&reference().join("cifar10_test64_nchw.npy")).unwrap();
        assert_eq!(array.shape, vec![64, 3, 32, 32]);
        let NpyData::F32(values) = &array.data else { panic!("dtype {}", array.data.descr()) };
        // First values of the reference batch, as numpy prints them.
        assert_eq!(&values[..4], &[0.2966864, 0.60493195, 0.7590547, 1.0844251]);
    }

    #[test]
    fn reads_a_numpy_written_npz() {
        let arrays = read_npz(&reference().join("blur_reference.npz")).unwrap();
        let names: Vec<&str> = arrays.keys().map(String::as_str).collect();
        assert_eq!(names, ["blur0.5", "blur1.0", "blur1.5", "blur2.0", "blur2.5", "blur3.0", "clean", "index"]);
        assert_eq!(arrays["clean"].shape, vec![50, 32, 32, 3]);
        let NpyData::I64(index) = &arrays["index"].data else { panic!("index dtype") };
        assert_eq!(&index[..3], &[0, 200, 400]);
    }

    #[test]
    fn rejects_bad_files_with_reasons() {
        let good = NpyArray::new(vec![4], NpyData::F32(vec![1.0; 4])).unwrap().to_bytes();
        let truncated = NpyArray::parse(&good[..good.len() - 1]).unwrap_err();
        assert!(truncated.contains("promises 16 bytes"), "{truncated}");

        // Same-length edits of the header, so that the data stays where it was.
        let edit = |from: &str, to: &str| {
            assert_eq!(from.len(), to.len());
            let at = good.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
            [&good[..at], to.as_bytes(), &good[at + from.len()..]].concat()
        };
        let shape = |spaces: usize| format!("(4,), }}{}", " ".repeat(spaces));
        let huge = NpyArray::parse(&edit(&shape(23), "(4000000000000, 4000000000), }")).unwrap_err();
        assert!(huge.contains("too large"), "{huge}");
        let greedy = NpyArray::parse(&edit(&shape(8), "(400000000,), }")).unwrap_err();
        assert!(greedy.contains("promises 1600000000 bytes"), "{greedy}");
        assert!(NpyArray::parse(&edit("False", "True ")).unwrap_err().contains("Fortran"));
        assert!(NpyArray::parse(&edit("<f4", ">f4")).unwrap_err().contains("'>f4' is not supported"));

        assert!(NpyArray::parse(b"PK\x03\x04 not numpy").unwrap_err().contains("magic"));
        assert!(NpyArray::parse(&good[..20]).unwrap_err().contains("header"));
    }

    #[test]
    fn errors_name_the_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("broken.npy");
        std::fs::write(&path, b"\x93NUMPY\x01\x00\x05\x00{'de").unwrap();
        let message = read_npy(&path).unwrap_err().to_string();
        assert!(message.contains("broken.npy"), "{message}");
        write_npy(&path, &NpyArray::new(vec![1], NpyData::U8(vec![9])).unwrap()).unwrap();
        assert_eq!(read_npy(&path).unwrap().data, NpyData::U8(vec![9]));
    }

    #[test]
    fn npz_round_trips() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("arrays.npz");
        let arrays = BTreeMap::from([
            ("layer0.weight".to_string(), NpyArray::new(vec![2, 1, 1, 1], NpyData::F32(vec![0.5, -2.0])).unwrap()),
            ("index".to_string(), NpyArray::new(vec![3], NpyData::I64(vec![4, 5, 6])).unwrap()),
        ]);
        write_npz(&path, &arrays).unwrap();
        assert_eq!(read_npz(&path).unwrap(), arrays);
        std::fs::write(&path, b"PK\x03\x04 truncated").unwrap();
        assert!(read_npz(&path).unwrap_err().to_string().contains("arrays.npz"));
    }
}
