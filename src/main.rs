//! The `allot` command line: run the service or print its OpenAPI document.

use std::io::IsTerminal;
use std::process::ExitCode;

use allot::adapters::mongo::instances::Instance;
use allot::adapters::mongo::users::MongoUsers;
use allot::adapters::passwords::Argon2Hasher;
use allot::config::Settings;
use allot::services::{self, users::AdminGrant};
use allot::startup::{Application, Production, shutdown_signal};
use clap::{Parser, Subcommand, ValueEnum};

/// allot: users, JWTs and stock allocation over MongoDB.
///
/// Settings come from config/default.toml, config/$ALLOT_ENV.toml
/// (development, testing or production; built-in copies stand in for files
/// missing from ./config or $ALLOT_CONFIG_DIR) and ALLOT__SECTION__KEY variables.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Print the OpenAPI document to stdout.
    Openapi {
        #[arg(long, value_enum, default_value_t = SpecFormat::Yaml)]
        format: SpecFormat,
    },
    /// Convert a database written by allot 0.1 (order lines inside batch
    /// documents) to this version's layout. Idempotent and resumable: run it
    /// again after an interruption. Stop every allot process first.
    Migrate,
    /// Manage users in the configured database.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Grant the admin role to a user, creating the user if needed. A new
    /// user's password comes from ALLOT_ADMIN_PASSWORD, or is asked for on a terminal.
    CreateAdmin {
        #[arg(long)]
        username: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SpecFormat {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    return_large_allocations_to_the_os();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi { format } => {
            let spec = match format {
                SpecFormat::Yaml => allot::api::spec::yaml::<Production>(),
                SpecFormat::Json => allot::api::spec::json::<Production>(),
            };
            print!("{spec}");
            if !spec.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Command::Serve => serve(),
        Command::Migrate => migrate(),
        Command::Users {
            command: UsersCommand::CreateAdmin { username },
        } => create_admin(&username),
    }
}

/// Pins glibc's mmap threshold at its default (128 KiB), which also turns off
/// its dynamic raising. Left dynamic, it rises to the size of an Argon2 block
/// (7 MiB) after the first hash, and later blocks then come from malloc arenas
/// that keep them: measured, resident memory went from 25 MiB to 58 MiB under
/// a login storm. Pinned, every such block goes back to the OS when freed.
fn return_large_allocations_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sets a malloc tunable before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Loads the settings, refusing unsafe production ones; prints why on failure.
fn load_settings() -> Result<Settings, ExitCode> {
    Settings::load()
        .and_then(|settings| settings.check_production_safety().map(|()| settings))
        .map_err(|error| {
            eprintln!("allot: {error}");
            ExitCode::from(2)
        })
}

/// The settings, and the runtime they configure.
fn settings_and_runtime() -> Result<(tokio::runtime::Runtime, Settings), ExitCode> {
    let settings = load_settings()?;
    Ok((runtime(&settings)?, settings))
}

/// The async runtime, with `http.worker_threads` workers (0: tokio's
/// default, one per core).
fn runtime(settings: &Settings) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if settings.http.worker_threads > 0 {
        builder.worker_threads(settings.http.worker_threads);
    }
    builder.enable_all().build().map_err(|error| {
        eprintln!("allot: cannot start the async runtime: {error}");
        ExitCode::FAILURE
    })
}

fn admin_password(username: &str) -> Result<String, String> {
    if let Ok(password) = std::env::var("ALLOT_ADMIN_PASSWORD") {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err("set ALLOT_ADMIN_PASSWORD, or run on a terminal to be asked".to_owned());
    }
    let password = rpassword::prompt_password(format!("Password for {username}: "))
        .map_err(|e| e.to_string())?;
    let again = rpassword::prompt_password("Repeat it: ").map_err(|e| e.to_string())?;
    if password == again {
        Ok(password)
    } else {
        Err("the passwords differ".to_owned())
    }
}

fn create_admin(username: &str) -> ExitCode {
    let (runtime, settings) = match settings_and_runtime() {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    allot::telemetry::init(&settings.log);
    runtime.block_on(async {
        let database = match connect(&settings).await {
            Ok(database) => database,
            Err(error) => {
                eprintln!("allot: {error}");
                return ExitCode::FAILURE;
            }
        };
        let hasher = match Argon2Hasher::new(&settings.auth) {
            Ok(hasher) => hasher,
            Err(error) => {
                eprintln!("allot: {error}");
                return ExitCode::FAILURE;
            }
        };
        // A one-off process: it takes no lease, so should it die in a
        // transaction, any serving instance aborts that at its next survey.
        let instance = Instance::new(&database, std::time::Duration::ZERO);
        let users = MongoUsers::new(&database, &instance);
        let policy = settings.auth.password_policy();
        let password = || admin_password(username);
        match services::users::create_admin(&users, &hasher, policy, username, password).await {
            Ok(AdminGrant::Created) => {
                println!("created admin {}", username.to_ascii_lowercase());
                ExitCode::SUCCESS
            }
            Ok(AdminGrant::Promoted) => {
                println!("granted admin to {}", username.to_ascii_lowercase());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("allot: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

fn migrate() -> ExitCode {
    use allot::adapters::mongo::{self, layout};
    let (runtime, settings) = match settings_and_runtime() {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    allot::telemetry::init(&settings.log);
    runtime.block_on(async {
        let outcome = async {
            let client = mongo::client(&settings.mongo).await?;
            let database = client.database(&settings.mongo.database);
            mongo::ping(&database)
                .await
                .map_err(|source| mongo::MongoError::Unreachable {
                    uri: settings.mongo.redacted_uri(),
                    waited_secs: 0,
                    source,
                })?;
            Ok::<_, mongo::MongoError>(layout::migrate(&client, &database).await?)
        };
        match outcome.await {
            Ok(done) => {
                println!(
                    "migrated {} batches and {} order lines; the database is in layout {}",
                    done.batches,
                    done.lines,
                    layout::LAYOUT_VERSION
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("allot: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn connect(
    settings: &Settings,
) -> Result<mongodb::Database, allot::adapters::mongo::MongoError> {
    let client = allot::adapters::mongo::client(&settings.mongo).await?;
    let database = client.database(&settings.mongo.database);
    allot::adapters::mongo::prepare(&settings.mongo, &database).await?;
    Ok(database)
}

fn serve() -> ExitCode {
    let (runtime, settings) = match settings_and_runtime() {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    allot::telemetry::init(&settings.log);
    match allot::server::raise_open_file_limit() {
        // Listener, database pool, logs and spare: a few dozen descriptors.
        Ok(limit) if settings.http.max_connections as u64 + 64 > limit => tracing::warn!(
            open_file_limit = limit,
            max_connections = settings.http.max_connections,
            "http.max_connections does not fit under the open-file limit; \
             lower it or raise the limit (ulimit -n)"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    runtime.block_on(async move {
        let environment = settings.environment;
        let host = settings.http.host.clone();
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(error) => {
                tracing::error!(error = %error, "allot cannot start");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT/SIGTERM");
                return ExitCode::FAILURE;
            }
        };
        let shown_host = if host == "0.0.0.0" {
            "127.0.0.1"
        } else {
            &host
        };
        tracing::info!(
            %environment,
            docs = %format!("http://{shown_host}:{}/docs", app.port()),
            "allot is listening"
        );
        match app.run_until_stopped(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "server stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
