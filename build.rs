//! Collects the integration tests: every file in `tests/api/` is a module of
//! the test binary, and every `pub async fn name() {` at the top level of a
//! test module is a test, so writing one there is enough for it to run
//! (`tests/api/main.rs` includes what this generates).

use std::fmt::Write as _;
use std::path::Path;

/// Modules of `tests/api/` that hold the harness, not tests.
const HARNESS: [&str; 2] = ["helpers", "session"];

fn main() {
    let directory = Path::new("tests/api");
    println!("cargo::rerun-if-changed={}", directory.display());
    // A build without the tests (the Docker image's) has nothing to collect.
    let entries = std::fs::read_dir(directory).into_iter().flatten();
    let mut files: Vec<_> = entries
        .map(|entry| entry.expect("tests/api is readable").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "rs"))
        .collect();
    files.sort();
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut modules = String::new();
    let mut trials = String::from("fn collected_trials() -> Vec<Trial> {\n    trials![\n");
    for path in files {
        let module = path.file_stem().unwrap().to_str().unwrap();
        if module == "main" {
            continue;
        }
        writeln!(
            modules,
            "#[path = \"{root}/{}\"]\nmod {module};",
            path.display()
        )
        .unwrap();
        if HARNESS.contains(&module) {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("test module is readable");
        for line in source.lines() {
            let Some(rest) = line.strip_prefix("pub async fn ") else {
                continue;
            };
            if let Some(name) = rest.strip_suffix("() {") {
                writeln!(trials, "        {module}::{name},").unwrap();
            }
        }
    }
    trials.push_str("    ]\n}\n");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out).join("api_tests.rs"), modules + &trials)
        .expect("OUT_DIR is writable");
}
