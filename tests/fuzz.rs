//! The structure-aware fuzz harness (src/fuzz.rs, docs/fuzzing.md): a fixed-seed smoke run of
//! mutants of the bundled models in process, the kept crashers of `fixtures/fuzz/`, and the long
//! run's command on a few cases.

mod common;

use std::fs;
use std::path::Path;

use onnx_deeppatch::fuzz::{self, FuzzOptions, Verdict};

/// Seed and size of the smoke run (about 8 s in release mode on two idle cores); the environment
/// variables DEEPPATCH_FUZZ_SEED and DEEPPATCH_FUZZ_CASES change them for a longer local run.
const SEED: u64 = 13;
const CASES: u64 = 10_000;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn unchanged_models_pass_every_stage() {
    for base in fuzz::load_bases(&common::fixture("models")).unwrap() {
        assert_eq!(fuzz::check(&prost::Message::encode_to_vec(&base.model)), Verdict::Accepted, "{}", base.name);
    }
}

#[test]
fn smoke_mutants_never_panic() {
    let bases = fuzz::load_bases(&common::fixture("models")).unwrap();
    let (seed, cases) = (setting("DEEPPATCH_FUZZ_SEED", SEED), setting("DEEPPATCH_FUZZ_CASES", CASES));
    let start = std::time::Instant::now();
    let report = fuzz::smoke(&bases, seed, 0..cases);
    eprintln!("smoke run, seed {seed}, {:.1} s\n{}", start.elapsed().as_secs_f64(), report.text());
    // Set DEEPPATCH_FUZZ_KEEP=DIR to get each site's smallest reproducer (docs/fuzzing.md).
    if let Some(dir) = std::env::var_os("DEEPPATCH_FUZZ_KEEP") {
        for path in report.findings.save_examples(Path::new(&dir)).unwrap() {
            eprintln!("kept {}", path.display());
        }
    }
    assert_eq!(report.cases, cases);
    assert!(report.findings.is_empty(), "{} distinct failure sites (listed above)", report.findings.len());
}

#[test]
fn kept_crashers_no_longer_fail() {
    let mut failures = Vec::new();
    let mut count = 0;
    for entry in fs::read_dir(common::fixture("fuzz")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "onnx") {
            continue;
        }
        count += 1;
        let verdict = fuzz::check(&fs::read(&path).unwrap());
        if let Some((_, detail)) = verdict.failure() {
            failures.push(format!("{}: {detail}", path.display()));
        }
        assert!(!matches!(verdict, Verdict::Oversized), "{}: too large for the in-process check", path.display());
    }
    assert!(count > 0, "no crashers in fixtures/fuzz");
    assert!(failures.is_empty(), "{} of {count} kept crashers fail again:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn long_run_writes_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let options = FuzzOptions {
        cases: 3,
        seed: SEED,
        out: dir.path().to_path_buf(),
        models: common::fixture("models"),
        timeout_s: 20,
        memory_mib: 4096,
        jobs: Some(2),
        eval: None,
        backends: Vec::new(),
        checker: None,
        program: Some(env!("CARGO_BIN_EXE_onnx-deeppatch").into()),
    };
    let summary = fuzz::long_run(&options).unwrap();
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["cases"], 3);
    // Every case ran inspect and both patches; each failure's mutant is kept.
    for step in ["inspect", "patch", "patch-beta"] {
        let runs: u64 = json["steps"][step].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(runs, 3, "{step}");
    }
    for failure in &summary.failures {
        assert!(dir.path().join(&failure.file).exists(), "{} not kept", failure.file);
    }
    assert_eq!(summary.verdict().is_ok(), summary.failures.is_empty());
}
