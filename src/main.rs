//! The `allot` command line: run the service or print its OpenAPI document.

use std::process::ExitCode;

use allot::config::Settings;
use allot::startup::{Application, shutdown_signal};
use clap::{Parser, Subcommand, ValueEnum};

/// allot: users, JWTs and stock allocation over MongoDB.
///
/// Settings come from config/default.toml, config/$ALLOT_ENV.toml
/// (development, testing or production) and ALLOT__SECTION__KEY variables.
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
}

#[derive(Clone, Copy, ValueEnum)]
enum SpecFormat {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi { format } => {
            let api = allot::api::service();
            let spec = match format {
                SpecFormat::Yaml => api.spec_yaml(),
                SpecFormat::Json => api.spec(),
            };
            print!("{spec}");
            if !spec.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Command::Serve => serve(),
    }
}

fn serve() -> ExitCode {
    let settings = match Settings::load().and_then(|s| s.check_production_safety().map(|()| s)) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("allot: {error}");
            return ExitCode::from(2);
        }
    };
    allot::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
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
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "server stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}
