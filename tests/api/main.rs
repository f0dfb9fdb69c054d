//! One integration-test binary with a custom harness: the session starts a real
//! MongoDB server, runs every test against it in parallel, then drops every
//! database it created and checks that none is left — also when tests fail.

mod cli;
mod foundation;
mod helpers;
mod session;

use libtest_mimic::{Arguments, Trial};

/// `trial!(module::test_fn)`: an async test run on the session's runtime.
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

fn main() -> std::process::ExitCode {
    let arguments = Arguments::from_args();
    let trials = trials![
        foundation::hello_answers_the_seed_greeting,
        foundation::health_answers_200_while_the_process_is_up,
        foundation::ready_follows_the_database_away_and_back_without_a_restart,
        foundation::unknown_routes_and_methods_get_json_errors,
        foundation::bodies_over_the_limit_get_413_json,
        foundation::the_default_body_limit_is_64_kib,
        foundation::docs_and_spec_are_served,
        foundation::each_test_app_gets_a_database_of_its_own_that_the_session_drops,
        cli::an_unknown_environment_exits_non_zero_naming_the_valid_ones,
        cli::production_without_a_secret_refuses_and_names_the_setting,
        cli::an_unreachable_database_at_startup_exits_non_zero_with_the_redacted_uri,
        cli::openapi_command_prints_the_committed_spec,
        cli::production_logs_json_lines_and_stops_gracefully_on_sigterm,
    ];
    if arguments.list {
        libtest_mimic::run(&arguments, trials).exit();
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
