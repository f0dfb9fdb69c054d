//! One integration-test binary with a custom harness: the session starts a real
//! MongoDB server, runs every test against it in parallel, then drops every
//! database it created and checks that none is left — also when tests fail.

mod accounts;
mod allocation;
mod auth;
mod browser;
mod cli;
#[path = "../contract/allocation_repository.rs"]
mod contract;
mod contract_tools;
mod durability;
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
        auth::registration_returns_201_with_a_token_pair,
        auth::secret_with_an_access_token_says_hello_secret,
        auth::secret_without_a_header_is_401_missing_header,
        auth::secret_with_a_refresh_token_is_422_only_access_tokens,
        auth::secret_with_characters_appended_is_422_signature_failed,
        auth::secret_with_a_non_jwt_is_422_not_enough_segments,
        auth::secret_with_a_plain_text_header_is_422_bad_header,
        auth::an_expired_token_is_401_token_has_expired,
        auth::tokens_naming_another_algorithm_or_none_are_refused,
        auth::an_access_token_where_a_refresh_token_is_required_is_422,
        auth::a_logged_out_access_token_is_401_revoked,
        auth::logging_out_a_refresh_token_ends_its_whole_login,
        auth::login_returns_a_new_pair_and_refuses_bad_credentials_alike,
        auth::an_unknown_user_takes_about_as_long_as_a_wrong_password,
        auth::refresh_rotates_and_reuse_revokes_the_whole_family,
        auth::me_shows_the_profile_and_never_a_password_hash,
        auth::registration_rejects_bad_input_naming_the_field,
        auth::a_taken_username_is_409_regardless_of_case,
        auth::hello_stays_prompt_while_logins_are_hashing,
        auth::a_revocation_reaches_another_instance_within_a_second,
        auth::create_admin_creates_or_promotes_and_login_carries_the_role,
        auth::every_secured_operation_applies_the_token_rules,
        accounts::a_password_change_ends_every_login_everywhere,
        accounts::deleting_my_account_revokes_it_and_frees_the_username,
        accounts::admins_manage_accounts_and_every_change_revokes,
        accounts::admins_cannot_remove_themselves_or_the_last_admin,
        accounts::a_revocation_made_visible_late_still_reaches_every_instance,
        accounts::a_retried_refresh_is_no_reuse_but_a_real_reuse_is_caught,
        accounts::a_used_refresh_token_after_the_grace_period_is_a_reuse,
        accounts::failed_logins_are_throttled_per_username_and_address_on_every_instance,
        accounts::an_address_with_many_failures_is_throttled_for_every_username,
        accounts::a_forged_forwarded_header_does_not_escape_throttling,
        accounts::a_full_hashing_queue_answers_429_at_once,
        accounts::closed_registration_leaves_account_creation_to_admins,
        accounts::orders_belong_to_the_account_that_started_them,
        accounts::a_failed_login_401_carries_www_authenticate,
        allocation::test_happy_path_returns_201_and_allocated_batch,
        allocation::test_unhappy_path_returns_400_and_error_message,
        allocation::test_allocations_are_persisted,
        allocation::test_400_message_for_out_of_stock,
        allocation::warehouse_stock_is_preferred_and_reallocating_a_line_changes_nothing,
        allocation::adding_stock_needs_an_admin_and_a_unique_reference,
        allocation::batches_are_listed_in_pages_and_read_one_by_one,
        allocation::deallocating_frees_the_stock_and_allocations_are_readable_by_order,
        allocation::a_smaller_quantity_moves_the_latest_lines_and_backorders_the_rest,
        allocation::backorders_are_filled_oldest_first_when_stock_appears,
        allocation::bad_input_gets_400_naming_the_field_and_changes_nothing,
        allocation::concurrent_allocations_never_oversell_across_two_instances,
        allocation::an_uncontended_allocation_is_one_transaction_of_four_round_trips,
        allocation::the_mongodb_repository_passes_the_repository_contract,
        durability::a_shrink_killed_at_any_point_loses_no_line,
        durability::the_recovery_pass_finishes_a_shrink_a_crash_left_half_done,
        durability::two_hundred_buyers_of_one_sku_across_two_instances_all_get_201,
        durability::data_in_the_old_layout_is_refused_until_migrated,
        cli::an_unknown_environment_exits_non_zero_naming_the_valid_ones,
        cli::production_without_a_secret_refuses_and_names_the_setting,
        cli::an_unreachable_database_at_startup_exits_non_zero_with_the_redacted_uri,
        cli::openapi_command_prints_the_committed_spec,
        cli::production_logs_json_lines_and_stops_gracefully_on_sigterm,
        browser::swagger_ui_tries_out_hello_and_me_after_authorizing_in_chromium,
        contract_tools::the_committed_spec_passes_openapi_spec_validator,
        contract_tools::schemathesis_finds_no_contract_violation_with_a_user_token,
        contract_tools::schemathesis_finds_no_contract_violation_with_an_admin_token,
        contract_tools::a_generated_python_client_drives_a_whole_story,
    ];
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
