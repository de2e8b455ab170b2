//! Progress and log lines for long work: human-readable with rate and ETA on a terminal, one JSON
//! object per line for pipelines, or nothing with `--quiet`.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How the tool reports to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    format: LogFormat,
    quiet: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the reporting style once, at start-up (later calls are ignored).
pub fn configure(format: LogFormat, quiet: bool) {
    let _ = SETTINGS.set(Settings { format, quiet });
}

fn settings() -> Settings {
    *SETTINGS.get_or_init(|| Settings { format: LogFormat::Text, quiet: false })
}

/// A one-line message about what the tool is doing.
pub fn info(message: &str) {
    let s = settings();
    if s.quiet {
        return;
    }
    match s.format {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => eprintln!("{}", serde_json::json!({ "event": "info", "message": message })),
    }
}

/// Counts finished items of one task and reports rate and ETA at most every `interval`.
pub struct Progress {
    task: String,
    total: usize,
    done: usize,
    start: Instant,
    last: Instant,
    interval: Duration,
    live: bool,
    /// Running figures shown after the count (a training loss, an accuracy).
    detail: String,
}

impl Progress {
    /// Starts a task of `total` items (images, filters, batches).
    pub fn new(task: impl Into<String>, total: usize) -> Self {
        let live = std::io::stderr().is_terminal() && settings().format == LogFormat::Text;
        let now = Instant::now();
        Progress {
            task: task.into(),
            total,
            done: 0,
            start: now,
            last: now,
            interval: if live { Duration::from_millis(200) } else { Duration::from_secs(10) },
            live,
            detail: String::new(),
        }
    }

    /// Sets the running figures shown with the next report.
    pub fn set_detail(&mut self, detail: impl Into<String>) {
        self.detail = detail.into();
    }

    /// Records `count` more finished items.
    pub fn advance(&mut self, count: usize) {
        self.done = (self.done + count).min(self.total);
        if self.last.elapsed() >= self.interval {
            self.last = Instant::now();
            self.report(false);
        }
    }

    /// Items per second so far.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    /// Reports the final line and returns the elapsed time.
    pub fn finish(mut self) -> Duration {
        self.report(true);
        self.start.elapsed()
    }

    fn report(&mut self, last: bool) {
        let s = settings();
        if s.quiet {
            return;
        }
        let rate = self.rate();
        let eta = if rate > 0.0 { (self.total - self.done) as f64 / rate } else { f64::INFINITY };
        match s.format {
            LogFormat::Json => eprintln!(
                "{}",
                serde_json::json!({
                    "event": if last { "done" } else { "progress" }, "task": self.task, "done": self.done,
                    "total": self.total, "rate": round2(rate), "eta_s": if eta.is_finite() { round2(eta) } else { -1.0 },
                    "elapsed_s": round2(self.start.elapsed().as_secs_f64()), "detail": self.detail,
                })
            ),
            LogFormat::Text => {
                let mut line = if last {
                    format!("{}: {} in {:.1} s ({:.0}/s)", self.task, self.done, self.start.elapsed().as_secs_f64(), rate)
                } else {
                    format!("{}: {}/{} ({:.0}/s, ETA {})", self.task, self.done, self.total, rate, clock(eta))
                };
                if !self.detail.is_empty() {
                    line = format!("{line}, {}", self.detail);
                }
                let mut err = std::io::stderr().lock();
                if self.live {
                    let _ = write!(err, "\r\x1b[2K{line}");
                    if last {
                        let _ = writeln!(err);
                    }
                } else {
                    let _ = writeln!(err, "{line}");
                }
            }
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Seconds as m:ss or h:mm:ss.
fn clock(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats() {
        assert_eq!(clock(59.4), "0:59");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(f64::INFINITY), "?");
    }
}
