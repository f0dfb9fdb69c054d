//! Swagger UI in a real browser: tests/browser/swagger-ui.mjs drives headless Debian
//! chromium (playwright-core) through /docs of a running app — every tag listed,
//! "Try it out" on GET /tests/hello, "Authorize" with a bearer token, then GET /users/me.
//! `scripts/setup-browser` installs chromium and the pinned npm packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{PASSWORD, Tokens, random_name, spawn_app};

/// A backstop: the script gives up by itself after 120 s.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

const SETUP: &str = "run scripts/setup-browser (scripts/test does), which installs Debian's \
    chromium and the npm packages of tests/browser";

async fn swagger_ui_tries_out_hello_and_me_after_authorizing_in_chromium() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "{} is missing: {SETUP}",
        chromium.display()
    );
    assert!(
        project
            .join("tests/browser/node_modules/playwright-core/package.json")
            .is_file(),
        "tests/browser/node_modules is missing playwright-core: {SETUP}"
    );

    let app = spawn_app().await;
    let username = random_name("browser");
    let (status, body) = app.register(&username, PASSWORD).await;
    assert_eq!(status, 201, "{body}");
    let tokens = Tokens::from(&body);

    let output_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let screenshot = output_dir.join("swagger-ui.png");
    let log_path = output_dir.join("swagger-ui.log");
    let _ = std::fs::remove_file(&screenshot);
    let _ = std::fs::remove_file(output_dir.join("swagger-ui-failure.png"));
    let mut command = Command::new("node");
    command
        .current_dir(project)
        .arg("tests/browser/swagger-ui.mjs")
        .arg(&app.address)
        .arg(&tokens.access)
        .arg(&username)
        .arg(&screenshot);
    // Blocking waits belong off the runtime that serves the app.
    let (outcome, log) = tokio::task::spawn_blocking(move || run(command, &log_path))
        .await
        .expect("the browser run's thread");
    assert!(
        outcome.is_ok(),
        "the Swagger UI browser check failed: {}\n--- output of node tests/browser/swagger-ui.mjs ---\n{log}",
        outcome.unwrap_err()
    );
    assert!(
        screenshot.is_file(),
        "no screenshot at {}\n{log}",
        screenshot.display()
    );
}

/// Runs `command` with its output going to `log_path`, within [`BROWSER_TIMEOUT`];
/// returns whether it exited 0 (else why not) and what it printed.
fn run(mut command: Command, log_path: &Path) -> (Result<(), String>, String) {
    let log = std::fs::File::create(log_path).expect("the browser log file");
    let spawned = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the browser log file"))
        .stderr(log)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            return (
                Err(format!(
                    "cannot run node ({error}); Node.js 20 or later is required"
                )),
                String::new(),
            );
        }
    };
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break Ok(()),
            Ok(Some(status)) => break Err(format!("it exited with {status}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("it was killed after {BROWSER_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => break Err(format!("cannot wait for it: {error}")),
        }
    };
    let printed = std::fs::read_to_string(log_path).unwrap_or_default();
    (
        outcome,
        format!("{printed}(log kept at {})", log_path.display()),
    )
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(browser: [
        swagger_ui_tries_out_hello_and_me_after_authorizing_in_chromium,
    ])
}
