//! Layered settings: `config/default.toml`, then `config/<ALLOT_ENV>.toml`,
//! then `ALLOT__<SECTION>__<KEY>` environment variables.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The development-only JWT secret shipped in `config/default.toml`.
pub const DEVELOPMENT_JWT_SECRET: &str = "allot-development-secret-do-not-use-in-production";
/// The shipped configuration files, built in: used for each file missing on disk.
const BUILT_IN_DEFAULT: &str = include_str!("../config/default.toml");
const BUILT_IN_DEVELOPMENT: &str = include_str!("../config/development.toml");
const BUILT_IN_TESTING: &str = include_str!("../config/testing.toml");
const BUILT_IN_PRODUCTION: &str = include_str!("../config/production.toml");

/// Shortest JWT secret production accepts, in bytes (the HS256 key size).
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

/// Which set of settings to load, chosen by `ALLOT_ENV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Testing,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Testing => "testing",
            Environment::Production => "production",
        }
    }

    /// Reads `ALLOT_ENV`; unset means development.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var("ALLOT_ENV") {
            Ok(value) => value.parse(),
            Err(std::env::VarError::NotPresent) => Ok(Environment::Development),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::UnknownEnvironment(
                "<not valid UTF-8>".to_owned(),
            )),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Environment {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "development" => Ok(Environment::Development),
            "testing" => Ok(Environment::Testing),
            "production" => Ok(Environment::Production),
            _ => Err(ConfigError::UnknownEnvironment(value.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unknown ALLOT_ENV {0:?}: use one of \"development\" (the default), \"testing\" or \"production\""
    )]
    UnknownEnvironment(String),
    #[error("ALLOT_CONFIG_DIR {0} is not a directory")]
    MissingConfigDir(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("refusing to start in production: {0}")]
    Insecure(String),
    #[error("invalid configuration: {0}")]
    OutOfRange(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Set from `ALLOT_ENV`, not from the files.
    #[serde(skip, default = "default_environment")]
    pub environment: Environment,
    pub http: HttpSettings,
    pub mongo: MongoSettings,
    pub log: LogSettings,
    pub auth: AuthSettings,
    pub allocation: AllocationSettings,
    pub events: EventSettings,
    pub metrics: MetricsSettings,
    pub webhooks: WebhookSettings,
}

/// Webhook deliveries (`config/default.toml` explains each).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Allow URLs whose host is (or resolves to) a loopback, private,
    /// link-local or other internal address. Off in production: such a URL
    /// would let an admin make allot call its own network.
    pub allow_private_targets: bool,
    /// Refuse `http://` URLs.
    pub require_https: bool,
    /// Longest a delivery may take, connecting included.
    pub delivery_timeout_ms: u64,
    /// The waits before each retry of a failed delivery; past the last one
    /// the subscription is disabled.
    pub retry_delays_secs: Vec<f64>,
    /// How long an instance holds a subscription it delivers without
    /// renewing it (renewed every third of it); another instance takes
    /// over this long after the holder died.
    pub lease_ms: u64,
    /// How often each instance looks for new events while a subscription it
    /// delivers waits for one.
    pub poll_interval_ms: u64,
    /// Deliveries under way at once on one instance.
    pub max_in_flight: usize,
    /// How long delivery attempts are kept for `GET /webhooks/{id}/deliveries`.
    pub attempts_kept_days: u64,
}

impl WebhookSettings {
    pub fn policy(&self) -> crate::domain::webhooks::TargetPolicy {
        crate::domain::webhooks::TargetPolicy {
            allow_private: self.allow_private_targets,
            require_https: self.require_https,
        }
    }

    pub fn schedule(&self) -> crate::domain::webhooks::RetrySchedule {
        crate::domain::webhooks::RetrySchedule::new(
            self.retry_delays_secs
                .iter()
                .map(|secs| std::time::Duration::from_secs_f64(*secs))
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AllocationSettings {
    /// How often each instance runs the recovery pass (finishes interrupted
    /// shrinks, allocates waiting lines whose stock appeared).
    pub recovery_interval_ms: u64,
}

/// The event feed (decision record 0004).
#[derive(Debug, Clone, Deserialize)]
pub struct EventSettings {
    /// How long events are kept, in days.
    pub retention_days: u64,
    /// How long the relay waits for changes before recording what it has.
    pub relay_interval_ms: u64,
    /// The longest a feed request waits for an event (`wait_ms` is cut to it).
    pub long_poll_max_ms: u64,
    /// Whether this instance may relay (record events); at least one must.
    pub relay_enabled: bool,
}

impl EventSettings {
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.retention_days * 24 * 3600)
    }
}

fn default_environment() -> Environment {
    Environment::Development
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub body_limit_bytes: usize,
    pub shutdown_grace_secs: u64,
    /// Time a client has to send a whole request head (HTTP/1.1), counted
    /// from the connection's start, or from the first byte of a keep-alive request.
    pub header_read_timeout_ms: u64,
    /// Time a request body may take to arrive, once its head is read.
    pub body_read_timeout_ms: u64,
    /// A connection without a request for this long is closed.
    pub idle_timeout_ms: u64,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Concurrent requests (streams) on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Threads that serve requests (the async runtime's workers); 0: one
    /// per CPU core.
    #[serde(default)]
    pub worker_threads: usize,
    /// Origins (`scheme://host[:port]`) browsers may call the API from.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Serve Swagger UI (`/docs`) and the spec (`/openapi.json`, `/openapi.yaml`).
    pub docs_enabled: bool,
    /// Peers whose `X-Forwarded-For` is believed (a reverse proxy in front of
    /// allot). From anyone else, the client address is the TCP peer.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub token: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MongoSettings {
    /// May hold credentials, so it never prints; see [`MongoSettings::redacted_uri`].
    pub uri: SecretString,
    pub database: String,
    pub connect_timeout_ms: u64,
    pub server_selection_timeout_ms: u64,
    pub ready_timeout_ms: u64,
    pub startup_retry_secs: u64,
    /// Longest wait for one database operation, on the server (`maxTimeMS`)
    /// and in allot; then the request gets 503.
    pub operation_timeout_ms: u64,
    /// An instance that has not renewed its lease for this long is taken as
    /// dead: its open transactions are aborted and its unfinished
    /// allocations finished by the others. Leases are renewed four times as
    /// often.
    pub instance_lease_ms: u64,
}

impl MongoSettings {
    /// The URI with any password replaced by `****`, safe for logs and errors.
    pub fn redacted_uri(&self) -> String {
        redact_uri(self.uri.expose_secret())
    }
}

/// Whether `value` is a browser origin: `http(s)://host[:port]`, nothing more.
fn is_origin(value: &str) -> bool {
    let Some(rest) = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
}

/// Replaces the password in `scheme://user:password@host/...` with `****`.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{}{user}:****{}", &uri[..scheme_end], &rest[at..])
        }
        None => uri.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    /// Give each request an id (`X-Request-Id`) that its log lines carry.
    pub request_ids: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    pub leeway_secs: u64,
    pub password_min_length: usize,
    pub password_max_length: usize,
    pub revocation_sync_ms: u64,
    pub hashing_concurrency: usize,
    /// Passwords waiting or being hashed at once; beyond that, login answers
    /// 429 at once. 0 = 8 per hashing thread.
    #[serde(default)]
    pub hashing_queue: usize,
    /// `open`: anyone may register; `closed`: only admins and the CLI create accounts.
    #[serde(default)]
    pub registration: Registration,
    /// How long a just-used refresh token may be presented again and get the
    /// same new pair (a retry whose reply was lost), while that pair is unused.
    #[serde(default = "default_refresh_retry_grace_secs")]
    pub refresh_retry_grace_secs: u64,
    #[serde(default)]
    pub login_throttle: LoginThrottleSettings,
    pub argon2: Argon2Settings,
}

/// Who may create accounts through the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    #[default]
    Open,
    Closed,
}

fn default_refresh_retry_grace_secs() -> u64 {
    10
}

/// Failed-login throttling. The per-username rule (5 failures in 15 minutes
/// from one address) is fixed; these settings tune the rest.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LoginThrottleSettings {
    /// The wait after the 5th failure; it doubles with each further one (at most 15 minutes).
    pub lockout_secs: u64,
    /// Failures from one client address, across usernames, within 15 minutes
    /// before every login from it waits.
    pub address_failures: u32,
}

impl Default for LoginThrottleSettings {
    fn default() -> Self {
        Self {
            lockout_secs: 30,
            address_failures: 100,
        }
    }
}

impl LoginThrottleSettings {
    pub fn policy(&self) -> crate::domain::throttle::ThrottlePolicy {
        crate::domain::throttle::ThrottlePolicy {
            lockout_base: std::time::Duration::from_secs(self.lockout_secs),
            address_failures: self.address_failures,
        }
    }
}

/// Argon2id cost parameters; stored hashes keep the parameters they were made with.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl AuthSettings {
    pub fn password_policy(&self) -> crate::domain::user::PasswordPolicy {
        crate::domain::user::PasswordPolicy {
            min_length: self.password_min_length,
            max_length: self.password_max_length,
        }
    }
}

impl Settings {
    /// Loads the settings for `ALLOT_ENV`: the built-in files, overridden by
    /// those in `ALLOT_CONFIG_DIR` (default `./config`, if it exists), then by
    /// the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let environment = Environment::from_env()?;
        let dir = match std::env::var_os("ALLOT_CONFIG_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if !dir.is_dir() {
                    return Err(ConfigError::MissingConfigDir(dir));
                }
                dir
            }
            None => PathBuf::from("config"),
        };
        Self::load_from(&dir, environment)
    }

    /// Each layer is `dir`'s file when it exists, else the copy built into
    /// the binary, so that `allot` runs from any directory.
    pub fn load_from(dir: &Path, environment: Environment) -> Result<Self, ConfigError> {
        let layer = |name: &str, built_in: &'static str| {
            let path = dir.join(name);
            if path.is_file() {
                Toml::file(path)
            } else {
                Toml::string(built_in)
            }
        };
        let environment_file = match environment {
            Environment::Development => BUILT_IN_DEVELOPMENT,
            Environment::Testing => BUILT_IN_TESTING,
            Environment::Production => BUILT_IN_PRODUCTION,
        };
        let mut settings: Settings = Figment::new()
            .merge(layer("default.toml", BUILT_IN_DEFAULT))
            .merge(layer(&format!("{environment}.toml"), environment_file))
            .merge(Env::prefixed("ALLOT__").split("__"))
            .extract()
            .map_err(Box::new)?;
        settings.environment = environment;
        settings.check_ranges()?;
        Ok(settings)
    }

    /// Refuses values that cannot work, naming the setting.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let checks = [
            (
                "http.body_limit_bytes",
                self.http.body_limit_bytes as u64,
                1024,
                64 << 20,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
                100,
                300_000,
            ),
            (
                "http.body_read_timeout_ms",
                self.http.body_read_timeout_ms,
                100,
                300_000,
            ),
            (
                "http.idle_timeout_ms",
                self.http.idle_timeout_ms,
                100,
                3_600_000,
            ),
            (
                "http.max_header_bytes",
                self.http.max_header_bytes as u64,
                8192,
                1 << 20,
            ),
            (
                "http.max_connections",
                self.http.max_connections as u64,
                1,
                1_000_000,
            ),
            (
                "http.http2_max_concurrent_streams",
                self.http.http2_max_concurrent_streams as u64,
                1,
                1000,
            ),
            (
                "mongo.operation_timeout_ms",
                self.mongo.operation_timeout_ms,
                10,
                600_000,
            ),
            (
                "auth.access_token_ttl_secs",
                auth.access_token_ttl_secs,
                1,
                86_400,
            ),
            (
                "auth.refresh_token_ttl_secs",
                auth.refresh_token_ttl_secs,
                1,
                366 * 86_400,
            ),
            ("auth.leeway_secs", auth.leeway_secs, 0, 300),
            (
                "auth.password_min_length",
                auth.password_min_length as u64,
                1,
                1024,
            ),
            (
                "auth.password_max_length",
                auth.password_max_length as u64,
                auth.password_min_length as u64,
                4096,
            ),
            (
                "auth.revocation_sync_ms",
                auth.revocation_sync_ms,
                10,
                60_000,
            ),
            (
                "auth.refresh_retry_grace_secs",
                auth.refresh_retry_grace_secs,
                0,
                300,
            ),
            (
                "auth.login_throttle.lockout_secs",
                auth.login_throttle.lockout_secs,
                1,
                900,
            ),
            (
                "auth.login_throttle.address_failures",
                u64::from(auth.login_throttle.address_failures),
                5,
                u64::from(u32::MAX),
            ),
            (
                "mongo.instance_lease_ms",
                self.mongo.instance_lease_ms,
                200,
                60_000,
            ),
            (
                "webhooks.delivery_timeout_ms",
                self.webhooks.delivery_timeout_ms,
                100,
                60_000,
            ),
            ("webhooks.lease_ms", self.webhooks.lease_ms, 300, 600_000),
            (
                "webhooks.poll_interval_ms",
                self.webhooks.poll_interval_ms,
                10,
                60_000,
            ),
            (
                "webhooks.max_in_flight",
                self.webhooks.max_in_flight as u64,
                1,
                10_000,
            ),
            (
                "webhooks.attempts_kept_days",
                self.webhooks.attempts_kept_days,
                1,
                365,
            ),
            (
                "allocation.recovery_interval_ms",
                self.allocation.recovery_interval_ms,
                10,
                3_600_000,
            ),
            ("events.retention_days", self.events.retention_days, 1, 3650),
            (
                "events.relay_interval_ms",
                self.events.relay_interval_ms,
                10,
                10_000,
            ),
            (
                "events.long_poll_max_ms",
                self.events.long_poll_max_ms,
                0,
                30_000,
            ),
        ];
        if let Err(error) = self
            .log
            .level
            .parse::<tracing_subscriber::filter::Targets>()
        {
            return Err(ConfigError::OutOfRange(format!(
                "log.level {:?} is not a log filter ({error}); try \"info\" or \"allot=debug,warn\"",
                self.log.level
            )));
        }
        let delays = &self.webhooks.retry_delays_secs;
        if delays.len() > 20
            || delays
                .iter()
                .any(|secs| !(0.01..=7.0 * 86_400.0).contains(secs))
        {
            return Err(ConfigError::OutOfRange(
                "webhooks.retry_delays_secs must hold at most 20 waits, each from 0.01 to 604800 seconds"
                    .to_owned(),
            ));
        }
        for origin in &self.http.cors_origins {
            if !is_origin(origin) {
                return Err(ConfigError::OutOfRange(format!(
                    "http.cors_origins: {origin:?} is not an origin; write scheme://host[:port], \
                     e.g. \"https://shop.example.com\", without a path or a trailing slash"
                )));
            }
        }
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::OutOfRange(format!(
                    "{name} is {value}; it must be between {min} and {max}"
                )));
            }
        }
        Ok(())
    }

    /// Production must not run with development defaults; names the setting to fix.
    pub fn check_production_safety(&self) -> Result<(), ConfigError> {
        if self.environment != Environment::Production {
            return Ok(());
        }
        let secret = self.auth.jwt_secret.expose_secret();
        let problem = if secret.is_empty() {
            Some("is not set")
        } else if secret == DEVELOPMENT_JWT_SECRET {
            Some("is the development secret")
        } else if secret.len() < MIN_PRODUCTION_SECRET_BYTES {
            Some("is shorter than 32 bytes")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(ConfigError::Insecure(format!(
                "auth.jwt_secret {problem}; set ALLOT__AUTH__JWT_SECRET to a random value of at least {MIN_PRODUCTION_SECRET_BYTES} bytes"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn each_environment_uses_its_own_database() {
        for (environment, database) in [
            (Environment::Development, "allot_dev"),
            (Environment::Testing, "allot_test"),
            (Environment::Production, "allot"),
        ] {
            let settings = Settings::load_from(&config_dir(), environment).unwrap();
            assert_eq!(settings.mongo.database, database, "{environment}");
            assert_eq!(settings.environment, environment);
        }
    }

    #[test]
    fn the_built_in_files_stand_in_for_missing_ones() {
        let empty = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for environment in [
            Environment::Development,
            Environment::Testing,
            Environment::Production,
        ] {
            let built_in = Settings::load_from(&empty, environment).unwrap();
            let on_disk = Settings::load_from(&config_dir(), environment).unwrap();
            assert_eq!(built_in.mongo.database, on_disk.mongo.database);
            assert_eq!(built_in.http.host, on_disk.http.host);
            assert_eq!(built_in.log.format, on_disk.log.format);
        }
    }

    #[test]
    fn an_unknown_environment_names_the_valid_ones() {
        let message = "bogus".parse::<Environment>().unwrap_err().to_string();
        for name in ["development", "testing", "production", "bogus"] {
            assert!(message.contains(name), "{message}");
        }
    }

    #[test]
    fn the_shipped_development_secret_is_the_one_production_refuses() {
        let settings = Settings::load_from(&config_dir(), Environment::Development).unwrap();
        assert_eq!(
            settings.auth.jwt_secret.expose_secret(),
            DEVELOPMENT_JWT_SECRET
        );
    }

    #[test]
    fn production_refuses_missing_development_and_short_secrets() {
        let mut settings = Settings::load_from(&config_dir(), Environment::Production).unwrap();
        for weak in [
            "",
            DEVELOPMENT_JWT_SECRET,
            "0123456789abcdef0123456789abcde",
        ] {
            settings.auth.jwt_secret = weak.into();
            let message = settings.check_production_safety().unwrap_err().to_string();
            assert!(message.contains("ALLOT__AUTH__JWT_SECRET"), "{message}");
        }
        settings.auth.jwt_secret = "0123456789abcdef0123456789abcdef".into();
        settings.check_production_safety().unwrap();
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let mut settings = Settings::load_from(&config_dir(), Environment::Testing).unwrap();
        settings.auth.refresh_token_ttl_secs = 0;
        let message = settings.check_ranges().unwrap_err().to_string();
        assert!(
            message.contains("auth.refresh_token_ttl_secs is 0"),
            "{message}"
        );
        settings.auth.refresh_token_ttl_secs = 60;
        settings.auth.password_max_length = 4;
        let message = settings.check_ranges().unwrap_err().to_string();
        assert!(message.contains("auth.password_max_length"), "{message}");
        settings.auth.password_max_length = 256;
        settings.log.level = "allot=loud".to_owned();
        let message = settings.check_ranges().unwrap_err().to_string();
        assert!(message.contains("log.level"), "{message}");
        settings.log.level = "info".to_owned();
        settings.http.cors_origins = vec!["https://shop.example.com/".to_owned()];
        let message = settings.check_ranges().unwrap_err().to_string();
        assert!(message.contains("http.cors_origins"), "{message}");
        settings.http.cors_origins = vec!["http://localhost:3000".to_owned()];
        settings.check_ranges().unwrap();
    }

    #[test]
    fn webhooks_default_to_public_https_targets_and_the_standard_schedule() {
        let production = Settings::load_from(&config_dir(), Environment::Production).unwrap();
        assert!(!production.webhooks.allow_private_targets);
        assert!(production.webhooks.require_https);
        assert_eq!(
            production.webhooks.schedule(),
            crate::domain::webhooks::RetrySchedule::default()
        );
        let mut testing = Settings::load_from(&config_dir(), Environment::Testing).unwrap();
        assert!(testing.webhooks.allow_private_targets);
        testing.webhooks.retry_delays_secs = vec![5.0, 0.0];
        let message = testing.check_ranges().unwrap_err().to_string();
        assert!(message.contains("webhooks.retry_delays_secs"), "{message}");
    }

    #[test]
    fn passwords_in_mongo_uris_are_redacted() {
        assert_eq!(
            redact_uri("mongodb://alice:s3cret@db:27017/allot?authSource=admin"),
            "mongodb://alice:****@db:27017/allot?authSource=admin"
        );
        assert_eq!(
            redact_uri("mongodb://db:27017/?a=b@c"),
            "mongodb://db:27017/?a=b@c"
        );
        assert_eq!(
            redact_uri("mongodb+srv://bob:p@ss@cluster.example.net"),
            "mongodb+srv://bob:****@cluster.example.net"
        );
    }
}
