//! The `onnx-deeppatch` command line: parses arguments, calls the library, maps errors to exit
//! codes (0 success, 2 usage or configuration, 3 unsupported model, 4 data, 1 internal).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use onnx_deeppatch::config::{AssessMethod, Config, Overrides};
use onnx_deeppatch::pipeline::Status;
use onnx_deeppatch::progress::{self, LogFormat};
use onnx_deeppatch::{assess, bench, eval, inspect, isolate, onnx, report, units};

#[derive(Parser)]
#[command(name = "onnx-deeppatch", version, about = "Make a deployed ONNX image classifier robust to blur and spatial shifts without losing standard accuracy (DeepPatch)")]
struct Cli {
    /// Print nothing but results and errors.
    #[arg(long, global = true)]
    quiet: bool,
    /// Format of progress and log lines on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Accept a model whose weights hold NaN or infinity (a warning instead of exit 3).
    #[arg(long, global = true)]
    allow_nonfinite: bool,
    /// Run the command in a child process under --time-limit and --memory-limit: a backend that
    /// aborts, crashes or hangs on a model ends as one error line (exit 3).
    #[arg(long, global = true)]
    isolate: bool,
    /// Time limit of --isolate, in seconds.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    time_limit: u64,
    /// Address-space limit of --isolate, in MiB (0: none).
    #[arg(long, global = true, value_name = "MIB", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    memory_limit: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, opsets, convolutions, parameters and DeepPatch units.
    Inspect {
        /// The ONNX model to describe.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Accuracy on the clean test set and each level of each corruption (--corruption): std, blurσ,
    /// nRob, joint by default; spat1/5 … spat5/5 and sRob for spatial. A γ-patched
    /// model is reported as PT, DP-β, DP-γ (with adapted shares), DP-γ batch-256, DP-fb and oracle.
    Eval {
        /// The ONNX model to evaluate (an original or a γ-patched model).
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
    /// Filter assessment: per convolution, the accuracy change on T_val* when each filter is zeroed.
    Assess {
        /// The model (not with --merge).
        #[arg(required_unless_present = "merge")]
        model: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
        /// Write the assessment artifact (JSON); a rerun after an interruption resumes from FILE.partial.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Use the oracle: one full pass over T_val* per filter.
        #[arg(long, conflicts_with = "method")]
        naive: bool,
        /// exact (every filter's count), screened (the exact method's blamed filters from a
        /// small-sample screen, exact counts where it is in doubt) or auto (assess.method) [default: exact].
        #[arg(long, value_enum)]
        method: Option<AssessMethod>,
        /// Blamed ratio κ (default 0.25).
        #[arg(long)]
        kappa: Option<f64>,
        /// Assess only layers k with k mod n = i (0-based i/n).
        #[arg(long, value_name = "I/N")]
        shard: Option<assess::Shard>,
        /// Join shard artifacts into one (written to --out).
        #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["model", "naive", "method", "shard"])]
        merge: Vec<PathBuf>,
    },
    /// Rewrite a model with a patch: the γ-patched model (default), the β model or an α model.
    Patch {
        /// The original ONNX model (never modified).
        model: PathBuf,
        /// Where to write the rewritten model; must not be an input.
        output: PathBuf,
        /// Patch specification (JSON, its arrays in the .npz beside it).
        #[arg(long, value_name = "FILE", required_unless_present_any = ["random_spec", "conv"])]
        spec: Option<PathBuf>,
        /// Blame the first ⌊κ·m⌋ filters of every convolution, with fresh Kaiming-uniform replacements.
        #[arg(long, conflicts_with = "spec")]
        random_spec: bool,
        /// κ of --random-spec.
        #[arg(long, default_value_t = 0.25)]
        kappa: f64,
        /// Seed of --random-spec.
        #[arg(long, default_value_t = 2022)]
        seed: u64,
        /// adapt-all, adapt-none, or a CR boundary value.
        #[arg(long)]
        boundary: Option<units::Boundary>,
        /// Build the β model (every unit on its replacement filters) instead of the γ model.
        #[arg(long)]
        beta: bool,
        /// Build an α model: zero --channels of this convolution.
        #[arg(long, value_name = "CONV", requires = "channels", conflicts_with_all = ["spec", "random_spec", "beta"])]
        conv: Option<String>,
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        channels: Option<Vec<usize>>,
        /// Also write the spec used (with --random-spec).
        #[arg(long, value_name = "FILE")]
        save_spec: Option<PathBuf>,
        /// The runtime the γ model is built for (its routing form; docs/deploy.md). Default: the
        /// target the spec records (calibrate --target), else ort.
        #[arg(long, value_enum, conflicts_with_all = ["beta", "conv"])]
        target: Option<units::Target>,
    },
    /// Retrain replacement filters for the blamed filters of an assessment (the β model), keeping
    /// the best epoch on T_val°; writes RUN/spec.json, its weights, train.csv and checkpoints.
    Train {
        /// The original ONNX model (never modified).
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        /// The `assess` artifact that ranks the filters.
        #[arg(long, value_name = "FILE")]
        assessment: PathBuf,
        /// Blamed ratio κ: the first ⌊κ·m⌋ filters of each layer's ranking (train.kappa).
        #[arg(long)]
        kappa: Option<f64>,
        /// Run folder (a rerun resumes from its checkpoint).
        #[arg(long, value_name = "RUN")]
        out: PathBuf,
    },
    /// The whole pipeline: assess → train → calibrate → the γ-patched model OUT, evaluated; every
    /// stage's artifact in the run folder, finished stages reused on a rerun.
    Rewrite {
        /// The model to maintain (ONNX; never modified).
        input: PathBuf,
        /// Where to write the result: the γ-patched model, or the original model when nothing
        /// beat it (the outcome line says which); must not be the input.
        output: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Blamed ratio κ (train.kappa).
        #[arg(long)]
        kappa: Option<f64>,
        /// The assessment stage's method: exact, screened or auto (assess.method) [default: exact].
        #[arg(long, value_enum)]
        assess_method: Option<AssessMethod>,
        /// Run folder (default: OUT with the extension .run).
        #[arg(long, value_name = "DIR")]
        run: Option<PathBuf>,
        /// The γ decision rule: auto, cr-midpoint, cr-accuracy or probe.
        #[arg(long, value_enum, default_value_t = onnx_deeppatch::calibrate::RuleChoice::Auto)]
        rule: onnx_deeppatch::calibrate::RuleChoice,
        /// Skip the evaluation on the test set.
        #[arg(long)]
        no_eval: bool,
        /// Exit with code 5 (after writing OUT) when OUT is the original model, unchanged.
        #[arg(long)]
        require_improvement: bool,
        /// The runtime the γ model is built for (its routing form; docs/deploy.md).
        #[arg(long, value_enum, default_value = "ort")]
        target: units::Target,
    },
    /// The whole pipeline on the bundled ResNet20 and CIFAR-10 subset, ending with the table.
    Demo {
        /// Folder for the patched model and the run's artifacts.
        #[arg(long, value_name = "DIR", default_value = "deeppatch-demo")]
        out: PathBuf,
    },
    /// Turn a γ-patched model back into the original computation.
    Strip {
        /// A γ-patched model.
        patched: PathBuf,
        /// Where to write the original computation; must not be the input.
        output: PathBuf,
    },
    /// Fit the γ decision on T_val and T_val*: three rules side by side, the chosen one into a new spec.
    Calibrate {
        /// The original ONNX model the spec patches.
        model: PathBuf,
        /// The patch specification to calibrate (not overwritten).
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// Where to write the spec with the chosen decision.
        #[arg(long, value_name = "FILE")]
        out_spec: PathBuf,
        /// Calibration report (JSON).
        #[arg(long, value_name = "FILE")]
        report: PathBuf,
        /// Which rule goes into the spec.
        #[arg(long, value_enum, default_value = "auto")]
        rule: onnx_deeppatch::calibrate::RuleChoice,
        /// Write histograms of CR and of the probe's logit (SVG) into DIR.
        #[arg(long, value_name = "DIR")]
        svg_dir: Option<PathBuf>,
        /// The runtime the served γ model is built for, recorded in the spec for `patch`.
        /// Default: the target the spec records, else ort.
        #[arg(long, value_enum)]
        target: Option<units::Target>,
        #[command(flatten)]
        common: Common,
    },
    /// Benchmarks measured side by side in one run.
    #[command(subcommand)]
    Bench(Bench),
    /// Fuzz the model loader and rewrites with structure-aware mutants (development): runs this
    /// binary on each mutant in child processes and keeps every case that fails (docs/fuzzing.md).
    Fuzz {
        #[command(flatten)]
        options: onnx_deeppatch::fuzz::FuzzOptions,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Training-step throughput on the β model of random replacements at --kappa, against its
    /// forward pass on the same batch.
    Train {
        /// The original ONNX model (never modified).
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 0.25)]
        kappa: f64,
        /// Images per step.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Timed steps (and forward passes), alternating; the fastest of each counts.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Also write the training-step graph (for a runtime profiler).
        #[arg(long, value_name = "FILE")]
        save_step: Option<PathBuf>,
    },
    /// `eval` throughput against bare inference on the same, already preprocessed tensors.
    Eval {
        /// The ONNX model to evaluate (an original or a γ-patched model).
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Alternating rounds of each; the best rate of each counts.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// What model validation costs against the whole `patch --random-spec` path (in this process and
    /// as a command of its own), side by side.
    Validate {
        model: PathBuf,
        /// Alternating rounds of each; the fastest of each counts.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Latency and size of a γ-patched model (random filters at --kappa) against the original.
    Patch {
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 0.25)]
        kappa: f64,
        /// Rounds of interleaved single runs (200 runs a round at batch 1, 4 at batch 256).
        #[arg(long, default_value_t = 25)]
        rounds: usize,
        /// The decision rule of the patched models.
        #[arg(long, value_enum, default_value = "cr")]
        rule: bench::BenchRule,
        /// Only the clean cases (batch 1 and 256): the decision's own cost.
        #[arg(long)]
        clean_only: bool,
    },
    /// Filter assessment: the fast method against the naive oracle, layer by layer on the same
    /// T_val* (set its size with --val-size); fails if their counts differ.
    Assess {
        model: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Layers to assess (indices among the assessable convolutions); all by default.
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        layers: Option<Vec<usize>>,
        /// Alternating rounds of each per layer; the fastest of each counts.
        #[arg(long, default_value_t = 1)]
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
    onnx::validate::allow_nonfinite(cli.allow_nonfinite);
    let result = if cli.isolate && !isolate::is_child() {
        let limits = isolate::Limits {
            time: std::time::Duration::from_secs(cli.time_limit),
            memory: (cli.memory_limit > 0).then_some(cli.memory_limit << 20),
        };
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        match isolate::run(&args, &limits) {
            // The child printed its own result or error line.
            Ok(code) => return ExitCode::from(code.clamp(0, 255) as u8),
            Err(error) => Err(error.into()),
        }
    } else {
        run(cli.command)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = if error.is::<Unchanged>() {
                i32::from(EXIT_UNCHANGED)
            } else {
                error.chain().find_map(|e| e.downcast_ref::<onnx_deeppatch::Error>()).map_or(1, |e| e.exit_code())
            };
            eprintln!("error: {}", format!("{error:#}").replace('\n', " "));
            ExitCode::from(code as u8)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect { model, json } => {
            let proto = onnx_deeppatch::analysis::load_as_is(&model)?;
            let inspection = inspect::inspect(&proto)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspection)?);
            } else {
                print!("{}", inspection.text());
            }
        }
        Command::Eval { model, common, report_json, report_md, report_svg } => {
            guard(&[("model", Some(&model)), ("configuration", common.config.as_ref())], &[("--report-json", report_json.as_ref()), ("--report-md", report_md.as_ref()), ("--report-svg", report_svg.as_ref())])?;
            let config = common.resolve()?;
            let outcome = eval::evaluate_model(&model, &config).with_context(|| format!("evaluating {}", model.display()))?;
            print!("{}", report::terminal(&outcome.report));
            write_report(report_json.as_deref(), || Ok(serde_json::to_string_pretty(&report::json(&outcome.report))? + "\n"))?;
            write_report(report_md.as_deref(), || Ok(report::markdown(&outcome.report)))?;
            write_report(report_svg.as_deref(), || Ok(report::chart(&outcome.report)))?;
        }
        Command::Assess { model, common, out, naive, method, kappa, shard, merge } => {
            let partial = out.as_deref().map(assess::partial_path);
            let mut inputs = vec![("model", model.as_ref()), ("configuration", common.config.as_ref())];
            inputs.extend(merge.iter().map(|p| ("artifact to merge", Some(p))));
            guard(&inputs, &[("--out", out.as_ref()), ("--out's partial file", partial.as_ref())])?;
            let assessment = match model {
                Some(model) if merge.is_empty() => {
                    let config = with_assess_method(with_kappa(common.resolve()?, kappa)?, method);
                    let options = assess::AssessOptions { naive, kappa: Some(config.train.kappa), shard, out: out.clone() };
                    assess::assess_model(&model, &config, &options).with_context(|| format!("assessing {}", model.display()))?
                }
                _ => {
                    let parts = merge.iter().map(|p| assess::load(p)).collect::<Result<Vec<_>, _>>()?;
                    let merged = assess::merge(&parts)?;
                    if let Some(out) = &out {
                        assess::save(&merged, out)?;
                    }
                    merged
                }
            };
            print!("{}", assessment.summary());
        }
        Command::Patch { model, output, spec, random_spec, kappa, seed, boundary, beta, conv, channels, save_spec, target } => {
            let spec_weights = spec.as_deref().map(units::spec::weights_path);
            let saved_weights = save_spec.as_deref().map(units::spec::weights_path);
            guard(
                &[("model", Some(&model)), ("spec", spec.as_ref()), ("spec's weights", spec_weights.as_ref())],
                &[("output", Some(&output)), ("--save-spec", save_spec.as_ref()), ("--save-spec's weights", saved_weights.as_ref())],
            )?;
            let proto = onnx_deeppatch::analysis::load(&model)?;
            let patched = if let Some(conv) = conv {
                units::alpha_model(&proto, &conv, &channels.unwrap_or_default())?
            } else {
                let mut spec = match spec {
                    Some(path) => units::PatchSpec::load(&path)?,
                    None if random_spec => units::spec::random_spec(&proto, kappa, seed, units::Decision::adapt_all())?,
                    None => anyhow::bail!("give --spec FILE or --random-spec"),
                };
                if let Some(boundary) = boundary {
                    spec.set_boundary(boundary);
                }
                if let Some(path) = save_spec {
                    spec.save(&path)?;
                }
                if beta { units::beta_model(&proto, &spec)?.0 } else { units::gamma_model_for(&proto, &spec, units::target::resolve(target, &spec)?)? }
            };
            onnx::save_model(&patched, &output, &onnx::SaveOptions { protect: Some(model), ..Default::default() })?;
        }
        Command::Train { model, common, assessment, kappa, out } => {
            let files = onnx_deeppatch::train::run_files(&out);
            guard(
                &[("model", Some(&model)), ("configuration", common.config.as_ref()), ("assessment", Some(&assessment))],
                &files.iter().map(|f| ("run folder file", Some(f))).collect::<Vec<_>>(),
            )?;
            let config = with_kappa(common.resolve()?, kappa)?;
            let trained = onnx_deeppatch::train::train_model(&model, &assessment, config.train.kappa, &config, &out)
                .with_context(|| format!("training replacement filters for {}", model.display()))?;
            println!("{}", serde_json::to_string_pretty(&trained.summary)?);
        }
        Command::Calibrate { model, spec, out_spec, report, rule, svg_dir, target, common } => {
            let (spec_weights, out_weights) = (units::spec::weights_path(&spec), units::spec::weights_path(&out_spec));
            let histograms = svg_dir.as_deref().map(onnx_deeppatch::calibrate::histogram_paths).unwrap_or_default();
            let mut outputs = vec![("--out-spec", Some(&out_spec)), ("--out-spec's weights", Some(&out_weights)), ("--report", Some(&report))];
            outputs.extend(histograms.iter().map(|p| ("histogram", Some(p))));
            guard(&[("model", Some(&model)), ("spec", Some(&spec)), ("spec's weights", Some(&spec_weights)), ("configuration", common.config.as_ref())], &outputs)?;
            let config = common.resolve()?;
            let options = onnx_deeppatch::calibrate::CalibrateOptions { rule, target };
            let calibration = onnx_deeppatch::calibrate::calibrate_files(&model, &spec, &out_spec, &report, svg_dir.as_deref(), &config, &options)
                .with_context(|| format!("calibrating {}", spec.display()))?;
            print!("{}", calibration.summary());
        }
        Command::Rewrite { input, output, common, kappa, assess_method, run, rule, no_eval, require_improvement, target } => {
            let config = with_assess_method(with_kappa(common.resolve()?, kappa)?, assess_method);
            let run = run.unwrap_or_else(|| onnx_deeppatch::pipeline::default_run(&output));
            let files = onnx_deeppatch::pipeline::run_files(&run);
            let mut outputs = vec![("output", Some(&output))];
            outputs.extend(files.iter().map(|f| ("run folder file", Some(f))));
            guard(&[("input model", Some(&input)), ("configuration", common.config.as_ref())], &outputs)?;
            let options = onnx_deeppatch::pipeline::RewriteOptions { run, rule, evaluate: !no_eval, target };
            let done = onnx_deeppatch::pipeline::rewrite(&input, &output, &config, &options)
                .with_context(|| format!("rewriting {}", input.display()))?;
            print_rewritten(&done);
            if require_improvement && done.outcome.status == Status::Unchanged {
                return Err(Unchanged(done.outcome.reason).into());
            }
        }
        Command::Demo { out } => {
            let done = onnx_deeppatch::pipeline::demo(&out).context("demo")?;
            print_rewritten(&done);
        }
        Command::Strip { patched, output } => {
            guard(&[("patched model", Some(&patched))], &[("output", Some(&output))])?;
            let proto = onnx::load_model(&patched)?;
            onnx::save_model(&units::strip(&proto)?, &output, &onnx::SaveOptions { protect: Some(patched), ..Default::default() })?;
        }
        Command::Fuzz { options } => {
            let summary = onnx_deeppatch::fuzz::long_run(&options)?;
            print!("{}", summary.text());
            summary.verdict()?;
        }
        Command::Bench(Bench::Train { model, common, kappa, batch, steps, save_step }) => {
            let config = common.resolve()?;
            let result = bench::train_throughput(&model, &config, kappa, batch, steps, save_step.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Command::Bench(Bench::Validate { model, rounds }) => {
            let executable = std::env::current_exe().context("finding this program's own executable")?;
            println!("{}", serde_json::to_string_pretty(&bench::validation_cost(&model, rounds, &executable)?)?);
        }
        Command::Bench(Bench::Eval { model, common, rounds }) => {
            let config = common.resolve()?;
            println!("{}", serde_json::to_string_pretty(&bench::eval_throughput(&model, &config, rounds)?)?);
        }
        Command::Bench(Bench::Patch { model, common, kappa, rounds, rule, clean_only }) => {
            let config = common.resolve()?;
            let options = bench::PatchCostOptions { kappa, rounds, rule, clean_only };
            println!("{}", serde_json::to_string_pretty(&bench::patch_cost(&model, &config, &options)?)?);
        }
        Command::Bench(Bench::Assess { model, common, layers, rounds }) => {
            let config = common.resolve()?;
            println!("{}", serde_json::to_string_pretty(&bench::assess_speed(&model, &config, layers.as_deref(), rounds)?)?);
        }
    }
    Ok(())
}

/// Refuses, before any work, an output that is an input of the command (see `onnx::io::check_outputs`).
fn guard(inputs: &[(&str, Option<&PathBuf>)], outputs: &[(&str, Option<&PathBuf>)]) -> anyhow::Result<()> {
    fn present<'a>(list: &[(&'a str, Option<&'a PathBuf>)]) -> Vec<(&'a str, &'a Path)> {
        list.iter().filter_map(|(role, path)| path.map(|p| (*role, p.as_path()))).collect()
    }
    Ok(onnx::io::check_outputs(&present(inputs), &present(outputs))?)
}

/// The table of a rewritten model and its outcome.
fn print_rewritten(done: &onnx_deeppatch::pipeline::Rewritten) {
    if let Some(evaluation) = &done.evaluation {
        print!("{}", report::terminal(&evaluation.report));
    }
    let status = match done.outcome.status {
        Status::Patched => "patched",
        Status::Unchanged => "unchanged",
    };
    println!("outcome: {status}: {}", done.outcome.reason);
}

/// Exit code of `rewrite --require-improvement` when OUT is the original model.
const EXIT_UNCHANGED: u8 = 5;

/// `rewrite --require-improvement` found nothing to patch (OUT is the original model).
#[derive(Debug, thiserror::Error)]
#[error("the output is the original model, unchanged ({0}); exit {EXIT_UNCHANGED} because of --require-improvement")]
struct Unchanged(String);

/// The configuration with `assess.method` set from a subcommand's flag, when given.
fn with_assess_method(mut config: Config, method: Option<AssessMethod>) -> Config {
    if let Some(method) = method {
        config.assess.method = method;
    }
    config
}

/// The configuration with `train.kappa` set from a subcommand's `--kappa`, when given.
fn with_kappa(mut config: Config, kappa: Option<f64>) -> anyhow::Result<Config> {
    if let Some(kappa) = kappa {
        config.train.kappa = kappa;
        config.validate()?;
    }
    Ok(config)
}

fn write_report(path: Option<&Path>, render: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
    if let Some(path) = path {
        onnx::io::write_atomically(path, render()?.as_bytes())?;
    }
    Ok(())
}
