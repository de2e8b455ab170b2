//! The `onnx-deeppatch` command line: parses arguments, calls the library, maps errors to exit
//! codes (0 success, 2 usage or configuration, 3 unsupported model, 4 data, 1 internal).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use onnx_deeppatch::config::{Config, Overrides};
use onnx_deeppatch::progress::{self, LogFormat};
use onnx_deeppatch::{bench, eval, inspect, onnx, report};

#[derive(Parser)]
#[command(name = "onnx-deeppatch", version, about = "Make a deployed ONNX image classifier robust to blur and spatial shifts without losing standard accuracy (DeepPatch)")]
struct Cli {
    /// Print nothing but results and errors.
    #[arg(long, global = true)]
    quiet: bool,
    /// Format of progress and log lines on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, opsets, convolutions, parameters and DeepPatch units.
    Inspect {
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Accuracy on the clean test set and its blurred copies: std, blurσ, nRob, joint.
    Eval {
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Write the report as JSON.
        #[arg(long, value_name = "FILE")]
        report_json: Option<PathBuf>,
        /// Write the report as a Markdown table.
        #[arg(long, value_name = "FILE")]
        report_md: Option<PathBuf>,
        /// Write an SVG chart of accuracy against σ.
        #[arg(long, value_name = "FILE")]
        report_svg: Option<PathBuf>,
    },
    /// Benchmarks measured side by side in one run.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// `eval` throughput against bare inference on the same, already preprocessed tensors.
    Eval {
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Alternating rounds of each; the best rate of each counts.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

/// The configuration file and the flags that override its fields.
#[derive(clap::Args)]
struct Common {
    /// YAML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

impl Common {
    fn resolve(&self) -> anyhow::Result<Config> {
        let base = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        Ok(self.overrides.apply(base)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    progress::configure(cli.log_format, cli.quiet);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.chain().find_map(|e| e.downcast_ref::<onnx_deeppatch::Error>()).map_or(1, |e| e.exit_code());
            eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
            ExitCode::from(code as u8)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect { model, json } => {
            let proto = onnx::load_model(&model)?;
            let inspection = inspect::inspect(&proto)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspection)?);
            } else {
                print!("{}", inspection.text());
            }
        }
        Command::Eval { model, common, report_json, report_md, report_svg } => {
            let config = common.resolve()?;
            let outcome = eval::evaluate_model(&model, &config).with_context(|| format!("evaluating {}", model.display()))?;
            print!("{}", report::terminal(&outcome.report));
            write_report(report_json.as_deref(), || Ok(serde_json::to_string_pretty(&report::json(&outcome.report))? + "\n"))?;
            write_report(report_md.as_deref(), || Ok(report::markdown(&outcome.report)))?;
            write_report(report_svg.as_deref(), || Ok(report::chart(&outcome.report)))?;
        }
        Command::Bench(Bench::Eval { model, common, rounds }) => {
            let config = common.resolve()?;
            let result = bench::eval_throughput(&model, &config, rounds)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
    }
    Ok(())
}

fn write_report(path: Option<&Path>, render: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
    if let Some(path) = path {
        onnx::io::write_atomically(path, render()?.as_bytes())?;
    }
    Ok(())
}
