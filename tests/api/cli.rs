//! The `allot` binary: environments, production safety, start-up failures,
//! logs and graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::helpers::{allot_command, free_port};
use crate::session::session;

async fn an_unknown_environment_exits_non_zero_naming_the_valid_ones() {
    let output = allot_command().env("ALLOT_ENV", "bogus").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for word in ["bogus", "development", "testing", "production"] {
        assert!(stderr.contains(word), "{stderr}");
    }
}

async fn production_without_a_secret_refuses_and_names_the_setting() {
    let output = allot_command()
        .env("ALLOT_ENV", "production")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ALLOT__AUTH__JWT_SECRET"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

async fn an_unreachable_database_at_startup_exits_non_zero_with_the_redacted_uri() {
    let output = allot_command()
        .env("ALLOT_ENV", "testing")
        .env(
            "ALLOT__MONGO__URI",
            format!("mongodb://alice:hunter2@127.0.0.1:{}/", free_port()),
        )
        .env("ALLOT__MONGO__STARTUP_RETRY_SECS", "1")
        .env("ALLOT__MONGO__SERVER_SELECTION_TIMEOUT_MS", "300")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("alice:****@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

async fn openapi_command_prints_the_committed_spec() {
    let output = allot_command().arg("openapi").output().unwrap();
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.yaml"))
            .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout) == committed,
        "`allot openapi` differs from openapi/openapi.yaml; \
         regenerate it with `cargo run --quiet -- openapi > openapi/openapi.yaml`"
    );
}

/// Starts `allot serve` and waits for its "listening" log line; returns the port.
fn serve(mut child: Child) -> (Child, u16, BufReader<std::process::ChildStderr>) {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "allot exited before listening"
        );
        if line.contains("listening")
            && let Some(port) = line
                .split("/docs")
                .next()
                .and_then(|s| s.rsplit(':').next())
        {
            return (
                child,
                port.parse().expect("a port in the listening line"),
                stderr,
            );
        }
    }
}

async fn production_logs_json_lines_and_stops_gracefully_on_sigterm() {
    let child = allot_command()
        .env("ALLOT_ENV", "production")
        .env(
            "ALLOT__AUTH__JWT_SECRET",
            "a-production-strength-secret-of-48-bytes-length",
        )
        .env("ALLOT__MONGO__URI", &session().mongo_uri)
        .env("ALLOT__MONGO__DATABASE", session().new_database_name())
        .env("ALLOT__HTTP__HOST", "127.0.0.1")
        .env("ALLOT__HTTP__PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut child, port, mut stderr) = serve(child);
    let response = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "allot did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let lines: Vec<serde_json::Value> = rest
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"))
        })
        .collect();
    let request = lines
        .iter()
        .find(|line| line["path"] == "/health")
        .unwrap_or_else(|| panic!("no request line for /health in {lines:?}"));
    assert_eq!(request["method"], "GET");
    assert_eq!(request["status"], 200);
    assert!(request["latency_ms"].is_number());
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(cli: [
        an_unknown_environment_exits_non_zero_naming_the_valid_ones,
        production_without_a_secret_refuses_and_names_the_setting,
        an_unreachable_database_at_startup_exits_non_zero_with_the_redacted_uri,
        openapi_command_prints_the_committed_spec,
        production_logs_json_lines_and_stops_gracefully_on_sigterm,
    ])
}
