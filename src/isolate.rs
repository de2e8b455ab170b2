//! Running a command of this tool in a child process under time and memory limits (`--isolate`;
//! the fuzz harness runs its cases the same way),
//! so that an abort, a crash or a hang inside a backend's native code, which no error handling in
//! this process can catch, ends as one clean error line instead of taking the caller down.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Set in the child's environment: the child runs the command itself instead of isolating again.
pub const CHILD_MARKER: &str = "DEEPPATCH_ISOLATED";

/// Limits of an isolated run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time after which the child is killed.
    pub time: Duration,
    /// Address-space limit of the child in bytes (`None`: no limit).
    pub memory: Option<u64>,
}

/// Whether this process is the child of an isolated run.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_MARKER).is_some()
}

/// Runs this executable with `args` in a child process under `limits` and returns its exit code.
/// Standard output and error are the child's own. A child killed by a signal, or still running
/// at the time limit (then killed), is an error naming what happened.
pub fn run(args: &[OsString], limits: &Limits) -> Result<i32> {
    let executable = std::env::current_exe().map_err(|e| Error::io("the running executable", e))?;
    let mut command = Command::new(&executable);
    command.args(args).env(CHILD_MARKER, "1");
    match run_limited(command, limits).map_err(|e| Error::io(&executable, e))? {
        Some(status) => exit_code(status, limits),
        None => Err(Error::Isolated(format!(
            "the command did not finish within {} s and was stopped (a backend may hang on this model; raise --time-limit if it is only slow)",
            limits.time.as_secs()
        ))),
    }
}

/// Runs `command` under `limits`: its exit status, or `None` when it was still running at the
/// time limit (it is then killed).
pub fn run_limited(mut command: Command, limits: &Limits) -> std::io::Result<Option<ExitStatus>> {
    #[cfg(unix)]
    if let Some(bytes) = limits.memory {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() >= limits.time {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The child's exit code, or an error for a child that a signal ended.
fn exit_code(status: ExitStatus, limits: &Limits) -> Result<i32> {
    if let Some(code) = status.code() {
        return Ok(code);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let memory = limits.memory.map(|m| format!(", memory limit {} MiB", m >> 20)).unwrap_or_default();
            return Err(Error::Isolated(format!(
                "the command was ended by signal {signal} ({}{memory}): a backend crashed or ran out of memory on this model",
                signal_name(signal)
            )));
        }
    }
    Err(Error::Isolated(format!("the command ended abnormally ({status})")))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}
