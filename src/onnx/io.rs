//! Loading and saving models: bounded reads, external data confined to the model's folder, atomic
//! writes that never replace the input model.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use super::proto::{tensor_proto::DataLocation, GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use crate::error::{Error, Result};

/// Protobuf cannot encode a message of 2 GiB or more; larger models keep tensors in a side file.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;
/// Tensors at least this large go to the side file when external data is used.
const EXTERNAL_THRESHOLD: usize = 1024;

/// Size limits of the inputs read whole (beyond them a file is refused before it is read).
pub const TEXT_LIMIT: u64 = 256 << 20;
pub const IMAGE_LIMIT: u64 = 64 << 20;
pub const ARRAY_LIMIT: u64 = 32 << 30;
/// The largest model file read: protobuf cannot encode more.
pub const MODEL_FILE_LIMIT: u64 = PROTOBUF_LIMIT as u64;

/// Reads an ONNX model, resolves external data into memory and validates it
/// ([`super::validate::check_model`]): everything later stages believe about it is checked here.
pub fn load_model(path: &Path) -> Result<ModelProto> {
    let model = read_model(path)?;
    super::validate::check_model(&model).map_err(|e| Error::model(path, e.to_string()))?;
    Ok(model)
}

/// Reads and decodes an ONNX model with its external data inlined, **not validated**: for a caller
/// that runs [`super::validate::check_indexed`] itself, on an index it needs too.
pub(crate) fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = read_input(path, MODEL_FILE_LIMIT)?;
    let mut model = decode_structure(&bytes, path)?;
    // A bare file name's folder is the working folder (`Path::parent` gives an empty path).
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    for_each_tensor_mut(&mut model, &mut |tensor| inline_external_data(tensor, &folder, path))?;
    Ok(model)
}

/// Reads a whole input file of at most `limit` bytes. Only regular files are read: a device such
/// as `/dev/zero` would never end, and opening a named pipe blocks until someone writes to it.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let size = regular_file_size(path)?;
    if size > limit {
        return Err(Error::data(path, format!("{size} bytes is more than the {limit} bytes this input may have")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    fs::File::open(path).and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut bytes)).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::data(path, format!("grew past the {limit} bytes this input may have while it was read")));
    }
    Ok(bytes)
}

/// SHA-256 (hex) over the contents of `files`, in order.
pub fn sha256_of_files(files: &[PathBuf]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for file in files {
        hash.update(read_input(file, ARRAY_LIMIT)?);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// [`read_input`] for a UTF-8 text file.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_input(path, limit)?).map_err(|_| Error::data(path, "is not UTF-8 text"))
}

/// The size of `path`, refusing anything but a regular file (after following symbolic links).
pub fn regular_file_size(path: &Path) -> Result<u64> {
    let metadata = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !metadata.is_file() {
        return Err(Error::data(path, "is not a regular file (a folder, device or named pipe cannot be read as one)"));
    }
    Ok(metadata.len())
}

/// Decodes and validates a model held in memory; `origin` names it in errors. External data is
/// not read, so only its extent is checked.
pub fn decode_model(bytes: &[u8], origin: &Path) -> Result<ModelProto> {
    let model = decode_structure(bytes, origin)?;
    super::validate::check_model(&model).map_err(|e| Error::model(origin, e.to_string()))?;
    Ok(model)
}

/// Decodes a model that has a graph with nodes, of an IR version the tool reads.
fn decode_structure(bytes: &[u8], origin: &Path) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| Error::model(origin, format!("not a valid ONNX model ({e})")))?;
    let graph = model.graph.as_ref().ok_or_else(|| Error::model(origin, "the model has no graph"))?;
    if graph.node.is_empty() {
        return Err(Error::model(origin, "the model's graph has no nodes"));
    }
    if model.ir_version.unwrap_or(0) < 3 {
        return Err(Error::model(origin, format!("IR version {} is not supported (3 or newer)", model.ir_version.unwrap_or(0))));
    }
    Ok(model)
}

/// How `save_model` stores tensors.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Store large tensors in `<model file name>.data` beside the model. `None` decides by size:
    /// external only when the inline encoding would exceed protobuf's 2 GiB limit.
    pub external_data: Option<bool>,
    /// A path the output must not be (the model this one was derived from).
    pub protect: Option<PathBuf>,
}

/// Writes `model` to `path` atomically (temporary file in the same folder, then rename).
pub fn save_model(model: &ModelProto, path: &Path, options: &SaveOptions) -> Result<()> {
    if let Some(input) = &options.protect {
        check_outputs(&[("input model", input)], &[("output", path)])?;
    }
    let external = options.external_data.unwrap_or_else(|| model.encoded_len() > PROTOBUF_LIMIT);
    if !external {
        return write_atomically(path, &model.encode_to_vec());
    }
    let data_name = format!(
        "{}.data",
        path.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::Config(format!("bad output path {}", path.display())))?
    );
    let mut model = model.clone();
    let mut blob = Vec::new();
    for_each_tensor_mut(&mut model, &mut |tensor| {
        externalise(tensor, &data_name, &mut blob);
        Ok(())
    })?;
    let data_path = path.with_file_name(&data_name);
    write_atomically(&data_path, &blob)?;
    write_atomically(path, &model.encode_to_vec())
}

/// Prefix of the temporary files of [`write_atomically`]; the writer's process id follows, so that
/// a later run can tell a leftover of a killed process from a file another process is writing.
const TMP_PREFIX: &str = ".deeppatch-";

/// Writes bytes to `path` through a temporary file in the same folder, so readers never see a
/// partial file. A new file gets the permissions the umask allows (as `File::create` would); a
/// replaced file keeps its mode. Leftovers of killed writers in that folder are removed first.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale_temporaries(&folder);
    let mut builder = tempfile::Builder::new();
    let prefix = format!("{TMP_PREFIX}{}-", std::process::id());
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // open(2) applies the umask to this mode.
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(&folder).map_err(|e| Error::io(&folder, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    if let Ok(existing) = fs::metadata(path) {
        tmp.as_file().set_permissions(existing.permissions()).map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Removes `.deeppatch-<pid>-*.tmp` files in `folder` whose writing process no longer runs (a
/// write killed half-way). Best effort: a file that cannot be removed stays.
fn remove_stale_temporaries(folder: &Path) {
    let Ok(entries) = fs::read_dir(folder) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)).filter(|n| n.ends_with(".tmp")).and_then(|n| n.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| pid != std::process::id() && !process_runs(pid)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether a process with this id runs (Linux: its /proc entry exists); elsewhere assumed running.
fn process_runs(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Where `path` leads: its canonical form when it exists, else its canonical folder joined with
/// its name (a symbolic link is followed to its target).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(canonical) = fs::canonicalize(path) {
        return Some(canonical);
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(fs::canonicalize(folder).ok()?.join(path.file_name()?))
}

/// Refuses (configuration error, before any work) an output that is one of the inputs, whether
/// named directly, through `..` or through a symbolic link, or that is named twice.
pub fn check_outputs(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<()> {
    let inputs: Vec<(&str, PathBuf)> = inputs.iter().filter_map(|(role, p)| Some((*role, resolved(p)?))).collect();
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    for (role, output) in outputs {
        let Some(target) = resolved(output) else { continue };
        if let Some((input_role, _)) = inputs.iter().find(|(_, input)| *input == target) {
            return Err(Error::Config(format!(
                "{role} {} is the {input_role}; refusing to overwrite an input, give another path",
                output.display()
            )));
        }
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == target) {
            return Err(Error::Config(format!("{role} {} is also the {other}; give two different paths", output.display())));
        }
        seen.push((role, target));
    }
    Ok(())
}

/// Visits every tensor of the model: initializers, constant attributes and sparse tensors, in the
/// main graph, in subgraphs and in functions.
fn for_each_tensor_mut(model: &mut ModelProto, visit: &mut dyn FnMut(&mut TensorProto) -> Result<()>) -> Result<()> {
    if let Some(graph) = model.graph.as_mut() {
        graph_tensors_mut(graph, visit)?;
    }
    for function in &mut model.functions {
        for node in &mut function.node {
            for attribute in &mut node.attribute {
                attribute_tensors_mut(attribute, visit)?;
            }
        }
    }
    for info in &mut model.training_info {
        for graph in [info.initialization.as_mut(), info.algorithm.as_mut()].into_iter().flatten() {
            graph_tensors_mut(graph, visit)?;
        }
    }
    Ok(())
}

fn graph_tensors_mut(graph: &mut GraphProto, visit: &mut dyn FnMut(&mut TensorProto) -> Result<()>) -> Result<()> {
    for tensor in &mut graph.initializer {
        visit(tensor)?;
    }
    for sparse in &mut graph.sparse_initializer {
        for tensor in [sparse.values.as_mut(), sparse.indices.as_mut()].into_iter().flatten() {
            visit(tensor)?;
        }
    }
    for node in &mut graph.node {
        for attribute in &mut node.attribute {
            attribute_tensors_mut(attribute, visit)?;
        }
    }
    Ok(())
}

fn attribute_tensors_mut(
    attribute: &mut super::proto::AttributeProto,
    visit: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    for tensor in attribute.t.iter_mut().chain(attribute.tensors.iter_mut()) {
        visit(tensor)?;
    }
    for sparse in attribute.sparse_tensor.iter_mut().chain(attribute.sparse_tensors.iter_mut()) {
        for tensor in [sparse.values.as_mut(), sparse.indices.as_mut()].into_iter().flatten() {
            visit(tensor)?;
        }
    }
    for graph in attribute.g.iter_mut().chain(attribute.graphs.iter_mut()) {
        graph_tensors_mut(graph, visit)?;
    }
    Ok(())
}

fn external_field<'t>(tensor: &'t TensorProto, key: &str) -> Option<&'t str> {
    tensor.external_data.iter().find(|e| e.key.as_deref() == Some(key)).and_then(|e| e.value.as_deref())
}

/// Replaces a tensor's external reference by its bytes, refusing locations outside `folder`.
fn inline_external_data(tensor: &mut TensorProto, folder: &Path, model_path: &Path) -> Result<()> {
    if tensor.data_location != Some(DataLocation::External as i32) {
        return Ok(());
    }
    let name = tensor.name.clone().unwrap_or_default();
    let bad = |message: String| Error::model(model_path, format!("external data of tensor '{name}': {message}"));
    let location = external_field(tensor, "location").ok_or_else(|| bad("no location given".into()))?;
    let relative = Path::new(location);
    if relative.is_absolute() || relative.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(bad(format!("location '{location}' leaves the model's folder")));
    }
    let file_path = folder.join(relative);
    let canonical_folder = fs::canonicalize(folder).map_err(|e| Error::io(folder, e))?;
    let canonical_file = fs::canonicalize(&file_path).map_err(|e| Error::io(&file_path, e))?;
    if !canonical_file.starts_with(&canonical_folder) {
        return Err(bad(format!("location '{location}' resolves outside the model's folder")));
    }
    let parse = |key: &str| -> Result<Option<u64>> {
        external_field(tensor, key)
            .map(|v| v.parse::<u64>().map_err(|_| bad(format!("{key} '{v}' is not a number"))))
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let file_len = regular_file_size(&canonical_file)?;
    let (_, needed) = super::validate::tensor_extent(tensor).map_err(|e| bad(e.to_string()))?;
    let length = parse("length")?.unwrap_or(needed);
    if length != needed {
        return Err(bad(format!("length {length} bytes, its dimensions {:?} need {needed}", tensor.dims)));
    }
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(bad(format!("offset {offset} + length {length} exceeds the file's {file_len} bytes")));
    }
    let mut file = fs::File::open(&canonical_file).map_err(|e| Error::io(&file_path, e))?;
    let mut bytes = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&file_path, e))?;
    file.read_exact(&mut bytes).map_err(|e| Error::io(&file_path, e))?;
    tensor.raw_data = Some(bytes);
    tensor.external_data.clear();
    tensor.data_location = None;
    Ok(())
}

/// Moves a large tensor's raw bytes into `blob`, leaving a reference (offsets aligned to 4 KiB, as
/// onnx's own writer does, so runtimes can map them).
fn externalise(tensor: &mut TensorProto, data_name: &str, blob: &mut Vec<u8>) {
    let Some(raw) = tensor.raw_data.as_ref() else { return };
    if raw.len() < EXTERNAL_THRESHOLD {
        return;
    }
    blob.resize(blob.len().next_multiple_of(4096), 0);
    let offset = blob.len();
    blob.extend_from_slice(raw);
    let entry = |key: &str, value: String| StringStringEntryProto { key: Some(key.into()), value: Some(value) };
    tensor.external_data = vec![
        entry("location", data_name.to_string()),
        entry("offset", offset.to_string()),
        entry("length", raw.len().to_string()),
    ];
    tensor.raw_data = None;
    tensor.data_location = Some(DataLocation::External as i32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fixture_model;

    #[test]
    fn round_trip_keeps_every_byte() {
        let path = fixture_model("tiny_cnn_cifar10");
        let original = fs::read(&path).unwrap();
        let model = load_model(&path).unwrap();
        assert_eq!(model.encode_to_vec(), original);
    }

    #[test]
    fn external_data_round_trip_and_confinement() {
        let dir = tempfile::tempdir().unwrap();
        let model = load_model(&fixture_model("tiny_cnn_cifar10")).unwrap();
        let out = dir.path().join("m.onnx");
        save_model(&model, &out, &SaveOptions { external_data: Some(true), ..Default::default() }).unwrap();
        assert!(dir.path().join("m.onnx.data").exists());
        assert!(fs::metadata(&out).unwrap().len() < 20_000);
        let back = load_model(&out).unwrap();
        assert_eq!(back, model);

        // Point one tensor outside the folder: the load must refuse it.
        let mut hostile = ModelProto::decode(fs::read(&out).unwrap().as_slice()).unwrap();
        let graph = hostile.graph.as_mut().unwrap();
        let tensor = graph.initializer.iter_mut().find(|t| t.data_location == Some(1)).unwrap();
        tensor.external_data[0].value = Some("../../etc/passwd".into());
        let bad = dir.path().join("hostile.onnx");
        fs::write(&bad, hostile.encode_to_vec()).unwrap();
        let message = load_model(&bad).unwrap_err().to_string();
        assert!(message.contains("leaves the model's folder"), "{message}");
    }

    #[test]
    fn refuses_to_overwrite_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.onnx");
        fs::copy(fixture_model("tiny_dw_cifar10"), &path).unwrap();
        let model = load_model(&path).unwrap();
        let err = save_model(&model, &path, &SaveOptions { protect: Some(path.clone()), ..Default::default() });
        assert!(matches!(err, Err(Error::Config(_))));
    }

    #[test]
    fn outputs_that_are_inputs_are_refused_however_named() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        fs::write(&model, b"x").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let dotted = dir.path().join("sub/../model.onnx");
        let link = dir.path().join("link.onnx");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        for output in [&model, &dotted, &link] {
            let message = check_outputs(&[("model", &model)], &[("--report-json", output)]).unwrap_err().to_string();
            assert!(message.contains("--report-json") && message.contains("is the model"), "{message}");
        }
        let other = dir.path().join("report.json");
        check_outputs(&[("model", &model)], &[("--report-json", &other)]).unwrap();
        let twice = check_outputs(&[], &[("--report-json", &other), ("--report-md", &other)]).unwrap_err().to_string();
        assert!(twice.contains("also the --report-json"), "{twice}");
    }

    #[test]
    fn writes_honour_the_umask_and_keep_a_replaced_files_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.onnx");
        write_atomically(&path, b"first").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // The test process's umask is 022 or stricter: group and others may read at most.
        assert_eq!(mode & 0o600, 0o600);
        assert_ne!(mode, 0o600, "a new file must not be private whatever the umask");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read(&path).unwrap(), b"second");
    }

    #[test]
    fn leftovers_of_killed_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has id 4 000 000 000 (above Linux's pid_max).
        let stale = dir.path().join(format!("{TMP_PREFIX}4000000000-abc.tmp"));
        let mine = dir.path().join(format!("{TMP_PREFIX}{}-abc.tmp", std::process::id()));
        fs::write(&stale, b"half").unwrap();
        fs::write(&mine, b"busy").unwrap();
        write_atomically(&dir.path().join("out.json"), b"{}").unwrap();
        assert!(!stale.exists());
        assert!(mine.exists());
    }

    #[test]
    fn truncated_and_random_bytes_are_errors() {
        let bytes = fs::read(fixture_model("tiny_dw_cifar10")).unwrap();
        for cut in [1, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_model(&bytes[..cut], Path::new("cut.onnx")).is_err(), "cut at {cut}");
        }
        let mut state = 0x9E3779B97F4A7C15u64;
        for _ in 0..200 {
            let noise: Vec<u8> = (0..512)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(decode_model(&noise, Path::new("noise.onnx")).is_err());
        }
    }
}
