//! The ONNX Runtime backend. The library is loaded at run time (ort's `load-dynamic`), so the tool
//! builds without it and uses whichever release the user has: `ORT_DYLIB_PATH`, else the one inside
//! an installed `onnxruntime` Python package, else the system library path.

use std::borrow::Cow;
use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use ::ort::environment::Environment;
use ::ort::ep;
use ::ort::logging::LogLevel;
use ::ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ::ort::session::{IoBinding, Session as OrtRuntimeSession, SessionInputValue};
use ::ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};
use ndarray::ArrayD;

use super::stepping::{Carried, SteppingSession};
use super::{BackendOptions, Device, Session, Signature};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A model on ONNX Runtime.
pub(super) struct OrtSession {
    signature: Signature,
    session: OrtRuntimeSession,
}

impl OrtSession {
    /// Opens `model` with ONNX Runtime's default graph optimisations, on the CUDA execution
    /// provider when asked (failing if it cannot be registered rather than falling back to the CPU).
    pub(super) fn open(model: &[u8], signature: Signature, options: &BackendOptions) -> Result<Self> {
        Ok(OrtSession { signature, session: runtime_session(model, options)? })
    }
}

/// An ONNX Runtime session on the device of `options` (see [`OrtSession::open`]).
fn runtime_session(model: &[u8], options: &BackendOptions) -> Result<OrtRuntimeSession> {
    {
        let mut builder = OrtRuntimeSession::builder(environment()?).map_err(|e| backend(e.to_string()))?;
        if let Some(threads) = options.threads {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| backend(format!("cannot use {threads} threads: {e}")))?;
        }
        if let Device::Cuda(index) = options.device {
            let cuda_error = |e: &dyn std::fmt::Display| {
                let cause = e.to_string();
                backend(format!(
                    "cannot use CUDA device {index}: {}; the CUDA execution provider needs the GPU build of \
                     ONNX Runtime (pip install onnxruntime-gpu, or ORT_DYLIB_PATH set to its libonnxruntime) \
                     with its CUDA and cuDNN libraries",
                    cause.trim_end_matches('.')
                ))
            };
            let device_id = i32::try_from(index).map_err(|e| cuda_error(&e))?;
            let cuda = ep::CUDA::default().with_device_id(device_id).build().error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| cuda_error(&e))?;
        }
        builder.commit_from_memory(model).map_err(|e| rejected(format!("cannot load the model: {e}")))
    }
}

impl Session for OrtSession {
    fn input_names(&self) -> &[String] {
        &self.signature.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.signature.outputs
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        self.signature.bind(inputs)?;
        let values = inputs
            .iter()
            .map(|(name, tensor)| Ok((Cow::Borrowed(*name), input_value(tensor)?)))
            .collect::<Result<Vec<_>>>()?;
        let outputs = self.session.run(values).map_err(|e| rejected(e.to_string()))?;
        self.signature
            .outputs
            .iter()
            .map(|name| match outputs.get(name) {
                Some(value) => output_tensor(value, name),
                None => Err(backend(format!("ONNX Runtime returned no output '{name}'"))),
            })
            .collect()
    }
}

/// Stepping through I/O binding: the carried tensors live in the session's device memory (the GPU
/// with CUDA) and never travel to the host between steps; each step writes them into a second
/// buffer, then the two swap, so no step reads and writes the same memory.
pub(super) struct OrtDeviceStepping {
    session: OrtRuntimeSession,
    binding: IoBinding,
    carried: Vec<DeviceCarried>,
    returned: Vec<String>,
    host: MemoryInfo<'static>,
}

struct DeviceCarried {
    input: String,
    output: String,
    current: ::ort::value::Tensor<f32>,
    spare: ::ort::value::Tensor<f32>,
}

impl OrtDeviceStepping {
    pub(super) fn open(model: &[u8], options: &BackendOptions, carried: Vec<Carried>) -> Result<Self> {
        let signature = Signature::decode(model)?;
        let session = runtime_session(model, options)?;
        let device = match options.device {
            Device::Cuda(index) => MemoryInfo::new(AllocationDevice::CUDA, index as i32, AllocatorType::Device, MemoryType::Default),
            Device::Cpu => MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default),
        }
        .map_err(|e| backend(format!("cannot describe the device memory: {e}")))?;
        let allocator = Allocator::new(&session, device).map_err(|e| backend(format!("cannot allocate on the device: {e}")))?;
        let on_device = |tensor: &Tensor| -> Result<::ort::value::Tensor<f32>> {
            let array = tensor.as_f32()?;
            let host = ::ort::value::Tensor::from_array(array.as_standard_layout().into_owned())
                .map_err(|e| backend(format!("cannot pass a carried tensor: {e}")))?;
            let mut value = ::ort::value::Tensor::<f32>::new(&allocator, array.shape().to_vec())
                .map_err(|e| backend(format!("cannot allocate a carried tensor: {e}")))?;
            host.copy_into(&mut value).map_err(|e| backend(format!("cannot copy a carried tensor to the device: {e}")))?;
            Ok(value)
        };
        let carried = carried
            .iter()
            .map(|c| {
                if !signature.outputs.contains(&c.output) {
                    return Err(Error::InvalidGraph(format!("the step model has no output '{}'", c.output)));
                }
                Ok(DeviceCarried { input: c.input.clone(), output: c.output.clone(), current: on_device(&c.value)?, spare: on_device(&c.value)? })
            })
            .collect::<Result<Vec<_>>>()?;
        let returned = signature.outputs.iter().filter(|o| carried.iter().all(|c| c.output != **o)).cloned().collect();
        let binding = session.create_binding().map_err(|e| backend(format!("cannot bind inputs and outputs: {e}")))?;
        let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| backend(format!("cannot describe host memory: {e}")))?;
        Ok(OrtDeviceStepping { session, binding, carried, returned, host })
    }
}

impl SteppingSession for OrtDeviceStepping {
    fn step(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        let bind = |e: ::ort::Error| backend(format!("cannot bind a step's values: {e}"));
        for (name, tensor) in inputs {
            let value = match tensor {
                Tensor::F32(a) => ::ort::value::Tensor::from_array(a.as_standard_layout().into_owned()).map(|t| t.into_dyn()),
                Tensor::I64(a) => ::ort::value::Tensor::from_array(a.as_standard_layout().into_owned()).map(|t| t.into_dyn()),
                Tensor::Bool(a) => ::ort::value::Tensor::from_array(a.as_standard_layout().into_owned()).map(|t| t.into_dyn()),
            }
            .map_err(bind)?;
            self.binding.bind_input(*name, &value).map_err(bind)?;
        }
        for carried in &mut self.carried {
            self.binding.bind_input(carried.input.clone(), &carried.current).map_err(bind)?;
            self.binding.bind_output(carried.output.clone(), &mut carried.spare).map_err(bind)?;
        }
        for name in &self.returned {
            self.binding.bind_output_to_device(name.clone(), &self.host).map_err(bind)?;
        }
        let outputs = self.session.run_binding(&self.binding).map_err(|e| backend(e.to_string()))?;
        let returned = self
            .returned
            .iter()
            .map(|name| match outputs.get(name) {
                Some(value) => output_tensor(value, name),
                None => Err(backend(format!("ONNX Runtime returned no output '{name}'"))),
            })
            .collect::<Result<Vec<_>>>()?;
        drop(outputs);
        for carried in &mut self.carried {
            std::mem::swap(&mut carried.current, &mut carried.spare);
        }
        Ok(returned)
    }

    fn output_names(&self) -> &[String] {
        &self.returned
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.carried
            .iter()
            .map(|c| {
                let host = c.current.to(AllocationDevice::CPU, 0).map_err(|e| backend(format!("cannot copy '{}' to the host: {e}", c.input)))?;
                Ok((c.input.clone(), output_tensor(&host.into_dyn(), &c.input)?))
            })
            .collect()
    }
}

/// Lends a tensor to ONNX Runtime without copying it; only an array that is not in standard
/// layout is copied into one first.
fn input_value(tensor: &Tensor) -> Result<SessionInputValue<'_>> {
    fn lend<T: PrimitiveTensorElementType + Clone + Debug + 'static>(
        array: &ArrayD<T>,
    ) -> Result<SessionInputValue<'_>> {
        let value = if array.is_standard_layout() {
            TensorRef::from_array_view(array).map(SessionInputValue::from)
        } else {
            ::ort::value::Tensor::from_array(array.as_standard_layout().into_owned()).map(SessionInputValue::from)
        };
        value.map_err(|e| backend(format!("cannot pass an input: {e}")))
    }
    match tensor {
        Tensor::F32(array) => lend(array),
        Tensor::I64(array) => lend(array),
        Tensor::Bool(array) => lend(array),
    }
}

/// Copies a graph output out of ONNX Runtime's memory.
fn output_tensor(value: &DynValue, name: &str) -> Result<Tensor> {
    fn read<T: PrimitiveTensorElementType + Clone>(value: &DynValue, name: &str) -> Result<ArrayD<T>> {
        value
            .try_extract_array::<T>()
            .map(|view| view.to_owned())
            .map_err(|e| backend(format!("cannot read output '{name}': {e}")))
    }
    match value.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, .. } => read(value, name).map(Tensor::F32),
        ValueType::Tensor { ty: TensorElementType::Int64, .. } => read(value, name).map(Tensor::I64),
        ValueType::Tensor { ty: TensorElementType::Bool, .. } => read(value, name).map(Tensor::Bool),
        other => Err(backend(format!("output '{name}' is a {other}; only float32, int64 and bool tensors are read"))),
    }
}

/// The process-wide ONNX Runtime environment, created on first use. The library can be loaded
/// only once per process, so a failure is kept and reported to every later caller too.
fn environment() -> Result<&'static Environment> {
    static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let library = locate_library(&LibrarySearch::from_process(), python_package_dir)?;
            crate::progress::info(&format!("onnxruntime: loading {}", library.display()));
            let environment = ::ort::init_from(&library)
                .map_err(|e| format!("cannot load ONNX Runtime: {e}"))?
                .with_name("onnx-deeppatch")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", library.display()))?;
            // onnxruntime logs a failure on stderr before returning it, and the tool's own error
            // line already carries its message; ORT_LOG (read by ort) still asks for more.
            if std::env::var_os("ORT_LOG").is_none() {
                environment.set_log_level(LogLevel::Fatal);
            }
            Ok(environment)
        })
        .as_ref()
        .map_err(|message| backend(message.clone()))
}

/// Where to look for the ONNX Runtime library, read from the process environment. Kept apart
/// from the search itself so that the search can be tested without touching the process.
#[derive(Debug)]
struct LibrarySearch {
    /// `ORT_DYLIB_PATH`, when set and not empty: the library file (or a folder holding it).
    explicit: Option<PathBuf>,
    /// Python interpreters to ask for the `onnxruntime` package, in order.
    pythons: Vec<PathBuf>,
    /// Folders of the system library path, in order.
    system_dirs: Vec<PathBuf>,
}

impl LibrarySearch {
    fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let mut pythons: Vec<PathBuf> =
            var("VIRTUAL_ENV").map(|venv| Path::new(&venv).join("bin/python")).into_iter().collect();
        // The working folder's venv, the venv of the checkout this binary was built from (where
        // scripts/test.sh installs onnxruntime), then whatever `python3` is on the PATH.
        pythons.push(PathBuf::from("./.venv/bin/python"));
        pythons.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
        pythons.push(PathBuf::from("python3"));
        pythons.dedup();
        let mut system_dirs: Vec<PathBuf> =
            var("LD_LIBRARY_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        system_dirs.extend(["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu"].map(PathBuf::from));
        LibrarySearch { explicit: var("ORT_DYLIB_PATH").map(PathBuf::from), pythons, system_dirs }
    }
}

/// Finds the ONNX Runtime library as [`LibrarySearch`] describes; `package_dir` answers where a
/// Python interpreter has the `onnxruntime` package, if it has it. The error says what was searched
/// and how to fix it.
fn locate_library(
    search: &LibrarySearch,
    package_dir: impl Fn(&Path) -> Option<PathBuf>,
) -> std::result::Result<PathBuf, String> {
    if let Some(explicit) = &search.explicit {
        let found =
            if explicit.is_dir() { library_in(explicit) } else { Some(explicit.clone()).filter(|p| p.is_file()) };
        return found.ok_or_else(|| {
            format!(
                "ORT_DYLIB_PATH is '{}', which is not the ONNX Runtime library ({DLL_PREFIX}onnxruntime{DLL_SUFFIX}) nor a \
                 folder holding it; set it to that file, or unset it to use an onnxruntime Python package \
                 (pip install onnxruntime) or the system library path",
                explicit.display()
            )
        });
    }
    let from_python = search
        .pythons
        .iter()
        .filter_map(|python| package_dir(python))
        .find_map(|package| library_in(&package.join("capi")));
    from_python.or_else(|| search.system_dirs.iter().find_map(|dir| library_in(dir))).ok_or_else(|| {
        let list = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        format!(
            "ONNX Runtime library not found: ORT_DYLIB_PATH is not set, no onnxruntime Python package was found by \
             [{}], and no {DLL_PREFIX}onnxruntime{DLL_SUFFIX}* is in [{}]; set ORT_DYLIB_PATH to the library file or \
             run `pip install onnxruntime`",
            list(&search.pythons),
            list(&search.system_dirs)
        )
    })
}

/// Where `python` has the `onnxruntime` package, if it runs and has it.
fn python_package_dir(python: &Path) -> Option<PathBuf> {
    let output = Command::new(python)
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(dir.trim())).filter(|dir| output.status.success() && dir.is_dir())
}

/// The ONNX Runtime library in `dir`, the highest version when there are several.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let names = std::fs::read_dir(dir).ok()?.filter_map(|entry| entry.ok()?.file_name().into_string().ok());
    names.filter(|name| is_library_name(name)).max_by_key(|name| version_key(name)).map(|name| dir.join(name))
}

/// Whether `name` is the ONNX Runtime library, with or without a version: `libonnxruntime.so`,
/// `libonnxruntime.so.1.32.0`, `libonnxruntime.1.32.0.dylib`, `onnxruntime.dll` (and not its
/// provider libraries such as `libonnxruntime_providers_shared.so`).
fn is_library_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(DLL_PREFIX).and_then(|n| n.strip_prefix("onnxruntime")) else {
        return false;
    };
    rest == DLL_SUFFIX
        || rest.strip_prefix(DLL_SUFFIX).is_some_and(|version| version.starts_with('.'))
        || (rest.starts_with('.') && rest.ends_with(DLL_SUFFIX))
}

/// The numbers in a library name, compared to pick the newest: `1.32.0` beats `1.9.1`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|part| part.parse().ok()).collect()
}

/// onnxruntime refused the model or failed to run it.
fn rejected(message: String) -> Error {
    Error::ModelRejected { backend: "ort", message: message.replace('\n', " ") }
}

fn backend(message: String) -> Error {
    Error::Backend { backend: "ort", message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(explicit: Option<&Path>, system_dirs: &[&Path]) -> LibrarySearch {
        LibrarySearch {
            explicit: explicit.map(Path::to_path_buf),
            pythons: vec![PathBuf::from("/nowhere/bin/python")],
            system_dirs: system_dirs.iter().map(|d| d.to_path_buf()).collect(),
        }
    }

    fn touch(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, b"").unwrap();
        path
    }

    #[test]
    fn backend_ort_missing_explicit_library_is_a_clear_error() {
        let missing = Path::new("/nonexistent/libonnxruntime.so.1.32.0");
        // ORT_DYLIB_PATH wins even when a library could be found elsewhere.
        let elsewhere = tempfile::tempdir().unwrap();
        touch(elsewhere.path(), &format!("{DLL_PREFIX}onnxruntime{DLL_SUFFIX}"));
        let message = locate_library(&search(Some(missing), &[elsewhere.path()]), |_| None).unwrap_err();
        assert!(message.starts_with("ORT_DYLIB_PATH is '/nonexistent/libonnxruntime.so.1.32.0'"), "{message}");
        assert!(message.contains("pip install onnxruntime"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn backend_ort_nothing_found_says_what_was_searched() {
        let empty = tempfile::tempdir().unwrap();
        let message = locate_library(&search(None, &[empty.path()]), |_| None).unwrap_err();
        assert!(message.contains("ORT_DYLIB_PATH is not set"), "{message}");
        assert!(message.contains("/nowhere/bin/python"), "{message}");
        assert!(message.contains(&empty.path().display().to_string()), "{message}");
        assert!(message.contains("pip install onnxruntime"), "{message}");
    }

    #[test]
    fn backend_ort_search_order_is_explicit_python_system() {
        let package = tempfile::tempdir().unwrap();
        std::fs::create_dir(package.path().join("capi")).unwrap();
        let system = tempfile::tempdir().unwrap();
        let in_system = touch(system.path(), &format!("{DLL_PREFIX}onnxruntime{DLL_SUFFIX}"));
        let package_of =
            |python: &Path| (python == Path::new("/nowhere/bin/python")).then(|| package.path().to_path_buf());

        // The package has no library yet: the system path is used.
        assert_eq!(locate_library(&search(None, &[system.path()]), package_of).unwrap(), in_system);
        let in_package = touch(&package.path().join("capi"), &format!("{DLL_PREFIX}onnxruntime{DLL_SUFFIX}"));
        touch(&package.path().join("capi"), &format!("{DLL_PREFIX}onnxruntime_providers_shared{DLL_SUFFIX}"));
        assert_eq!(locate_library(&search(None, &[system.path()]), package_of).unwrap(), in_package);
        // An explicit folder is searched, an explicit file taken as is.
        assert_eq!(locate_library(&search(Some(system.path()), &[]), package_of).unwrap(), in_system);
        assert_eq!(locate_library(&search(Some(&in_system), &[]), package_of).unwrap(), in_system);
    }

    #[test]
    fn backend_ort_library_names() {
        let versioned =
            if cfg!(target_os = "macos") { "libonnxruntime.1.32.0.dylib" } else { "libonnxruntime.so.1.32.0" };
        assert!(is_library_name(&format!("{DLL_PREFIX}onnxruntime{DLL_SUFFIX}")));
        assert_eq!(is_library_name(versioned), cfg!(unix));
        assert!(!is_library_name(&format!("{DLL_PREFIX}onnxruntime_providers_shared{DLL_SUFFIX}")));
        assert!(!is_library_name("onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so"));
        assert!(version_key("libonnxruntime.so.1.32.0") > version_key("libonnxruntime.so.1.9.1"));
    }
}
