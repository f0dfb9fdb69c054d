//! One integration-test binary with a custom harness: the session starts a real
//! MongoDB server, runs every test against it in parallel, then drops every
//! database it created and checks that none is left — also when tests fail.

use libtest_mimic::{Arguments, Trial};

/// Modules of `tests/api/` that hold the harness, not tests.
pub const HARNESS: &[&str] = &["main", "helpers", "session"];

/// `trials!(module: [test_fn, ...])`: the module's async tests, each run on
/// the session's runtime and named `module::test_fn`. A test left out of its
/// module's list is dead code, which clippy (`-D warnings`) refuses.
macro_rules! trials {
    ($module:ident: [$($name:ident),* $(,)?]) => {
        vec![$(
            libtest_mimic::Trial::test(concat!(stringify!($module), "::", stringify!($name)), || {
                crate::session::session().run(crate::within_the_test_limit($name()));
                Ok(())
            })
        ),*]
    };
}

mod helpers;
mod session;

/// Longest a test may run: past it the test fails, and what it started
/// (servers it spawned, say) is dropped, instead of holding up the run.
const TEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

async fn within_the_test_limit(test: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, test).await.is_err() {
        panic!("the test ran past {TEST_LIMIT:?}");
    }
}

mod accounts;
mod allocation;
mod attacks;
mod auth;
mod browser;
mod cli;
mod contract_tools;
mod durability;
mod edge;
mod events;
mod foundation;
mod operations;
mod webhooks;

/// The test modules: `foundation::every_file_of_the_api_tests_is_a_module_of_the_harness`
/// checks that every file of `tests/api/` is one of them (or the harness).
macro_rules! test_modules {
    ($($module:ident),* $(,)?) => {
        pub const TEST_MODULES: &[&str] = &[$(stringify!($module)),*];

        fn collected_trials() -> Vec<Trial> {
            let mut trials = Vec::new();
            $(trials.extend($module::trials());)*
            trials
        }
    };
}

test_modules!(
    accounts,
    allocation,
    attacks,
    auth,
    browser,
    cli,
    contract_tools,
    durability,
    edge,
    events,
    foundation,
    operations,
    webhooks,
);

fn main() -> std::process::ExitCode {
    // Before any reqwest client is built (see the function).
    allot::adapters::webhook_sender::install_crypto_provider();
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
