//! One integration-test binary with a custom harness: the session starts a real
//! MongoDB server, runs every test against it in parallel, then drops every
//! database it created and checks that none is left — also when tests fail.

#[path = "../contract/allocation_repository.rs"]
mod contract;

use libtest_mimic::{Arguments, Trial};

/// `trials![module::test_fn, ...]`: async tests run on the session's runtime.
macro_rules! trials {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$(
            Trial::test(concat!(stringify!($module), "::", stringify!($name)), || {
                session::session().run($module::$name());
                Ok(())
            })
        ),*]
    };
}

// The test modules (every file here) and their tests: see `build.rs`.
include!(concat!(env!("OUT_DIR"), "/api_tests.rs"));

fn main() -> std::process::ExitCode {
    let arguments = Arguments::from_args();
    let trials = collected_trials();
    if arguments.list {
        libtest_mimic::run(&arguments, trials).exit();
    }
    // RUST_LOG=... shows the apps' logs, e.g. to see the cause behind a 503.
    if let Some(filter) = std::env::var("RUST_LOG").ok().and_then(|f| f.parse().ok()) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let _ = tracing_subscriber::registry()
            .with::<tracing_subscriber::filter::Targets>(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init();
    }
    if let Err(message) = session::Session::start() {
        eprintln!("{message}");
        return std::process::ExitCode::FAILURE;
    }
    let conclusion = libtest_mimic::run(&arguments, trials);
    let teardown = session::session().finish();
    match &teardown {
        Ok(report) => eprintln!("{report}"),
        Err(problem) => eprintln!("{problem}"),
    }
    if conclusion.has_failed() || teardown.is_err() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
