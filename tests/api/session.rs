//! The test session: finds a real MongoDB server once, gives every test app its
//! own database, and drops them all when the run ends — pass or fail.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use mongodb::Client;
use mongodb::bson::doc;
use testcontainers::core::{CmdWaitFor, ExecCommand, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::runtime::Runtime;

pub struct Session {
    runtime: Runtime,
    /// Connection string of the server every test uses.
    pub mongo_uri: String,
    /// `host:port` of that server, for tests that put a proxy in front of it.
    pub mongo_address: String,
    /// Every database this session creates starts with this.
    pub database_prefix: String,
    next_database: AtomicUsize,
    client: Client,
    server: Mutex<Option<Server>>,
}

enum Server {
    External,
    Container(Box<ContainerAsync<GenericImage>>),
    Secantus(Child),
}

static SESSION: OnceLock<Session> = OnceLock::new();

const TEARDOWN_LIMIT: Duration = Duration::from_secs(120);

pub fn session() -> &'static Session {
    SESSION
        .get()
        .expect("the test session is set up before any test runs")
}

const NO_SERVER: &str = "no MongoDB server for the integration tests: set ALLOT_TEST_MONGO_URI, \
    start Docker or Podman (tests then run mongo:7), or run scripts/test, which installs \
    SecantusDB into .venv";

impl Session {
    pub fn start() -> Result<(), String> {
        // First, while this process still has a single thread: finding the
        // engine may set DOCKER_HOST.
        let docker = docker_is_reachable();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
        let (server, mongo_uri, mongo_address) = runtime.block_on(find_server(docker))?;
        let client = runtime
            .block_on(Client::with_uri_str(&mongo_uri))
            .map_err(|e| format!("invalid test MongoDB URI: {e}"))?;
        let settings = crate::helpers::testing_settings();
        let session = Session {
            runtime,
            mongo_uri,
            mongo_address,
            database_prefix: format!(
                "{}_{}_",
                settings.mongo.database,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            next_database: AtomicUsize::new(0),
            client,
            server: Mutex::new(Some(server)),
        };
        SESSION
            .set(session)
            .map_err(|_| "the test session was started twice".to_owned())
    }

    /// Runs a test body on the session's runtime.
    pub fn run<F: std::future::Future<Output = ()>>(&self, test: F) {
        self.runtime.block_on(test)
    }

    /// A fresh database name for one test app.
    pub fn new_database_name(&self) -> String {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        format!("{}{n}", self.database_prefix)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Drops every database of this session, then checks that none is left.
    pub fn finish(&self) -> Result<String, String> {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        let own_server = matches!(server, Some(Server::Secantus(_) | Server::Container(_)));
        let started = std::time::Instant::now();
        let drop_all = async {
            // Transactions of processes the tests killed would hold their
            // documents, and so a drop, for up to 60 s. No test runs now, and
            // no one else uses a server this run started.
            if own_server {
                let _ = self
                    .client
                    .database("admin")
                    .run_command(doc! { "killAllSessions": [] })
                    .await;
            }
            let ours = || async {
                self.client
                    .list_database_names()
                    .await
                    .map(|names| {
                        names
                            .into_iter()
                            .filter(|name| name.starts_with(&self.database_prefix))
                            .collect::<Vec<_>>()
                    })
                    .map_err(|e| format!("cannot list databases: {e}"))
            };
            let created = ours().await?;
            for name in &created {
                self.client
                    .database(name)
                    .drop()
                    .await
                    .map_err(|e| format!("cannot drop {name}: {e}"))?;
            }
            let remaining = ours().await?;
            if remaining.is_empty() {
                Ok(format!(
                    "session teardown: dropped {} test databases ({}*) in {:.1?}; none remain on the server",
                    created.len(),
                    self.database_prefix,
                    started.elapsed()
                ))
            } else {
                Err(format!(
                    "session teardown: databases still present: {remaining:?}"
                ))
            }
        };
        let dropped = self
            .runtime
            .block_on(async { tokio::time::timeout(TEARDOWN_LIMIT, drop_all).await });
        let late =
            format!("session teardown: the databases were not dropped within {TEARDOWN_LIMIT:?}");
        let outcome = match (dropped, &server) {
            (Ok(outcome), _) => outcome,
            // Its databases are in memory: they go with it.
            (Err(_), Some(Server::Secantus(_))) => {
                Ok(format!("{late}; the in-memory server is stopped with them"))
            }
            (Err(_), _) => Err(late),
        };
        match server {
            Some(Server::Secantus(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(Server::Container(container)) => {
                let _ = self.runtime.block_on(container.rm());
            }
            Some(Server::External) | None => {}
        }
        outcome
    }
}

async fn find_server(docker: bool) -> Result<(Server, String, String), String> {
    if let Ok(uri) = std::env::var("ALLOT_TEST_MONGO_URI") {
        let address = address_of(&uri);
        eprintln!("tests use the MongoDB at ALLOT_TEST_MONGO_URI ({address})");
        return Ok((Server::External, uri, address));
    }
    if docker {
        match start_container().await {
            Ok(found) => return Ok(found),
            Err(error) => eprintln!(
                "Docker is reachable but mongo:7 did not start ({error}); trying SecantusDB"
            ),
        }
    }
    let secantusd = secantusd_path();
    if !secantusd.is_file() {
        return Err(NO_SERVER.to_owned());
    }
    start_secantus(&secantusd).await
}

/// Whether a Docker engine, or Podman's Docker-compatible service, answers.
/// testcontainers itself only looks for rootful Docker (and Docker Desktop), so
/// an engine found elsewhere is handed to it through `DOCKER_HOST`. Must run
/// while the process has a single thread.
fn docker_is_reachable() -> bool {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return true;
    }
    let Some(socket) = docker_sockets()
        .into_iter()
        .find(|socket| UnixStream::connect(socket).is_ok())
    else {
        return false;
    };
    if socket != Path::new(ROOTFUL_DOCKER) {
        // SAFETY: Session::start calls this before it starts the tokio runtime,
        // while main's is the only thread, so nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("DOCKER_HOST", format!("unix://{}", socket.display())) };
    }
    true
}

const ROOTFUL_DOCKER: &str = "/var/run/docker.sock";

/// Where the engines listen, in order: rootful Docker, rootless Docker,
/// rootless Podman, rootful Podman.
fn docker_sockets() -> Vec<PathBuf> {
    // SAFETY: getuid has no preconditions and always succeeds.
    let uid = unsafe { libc::getuid() };
    let user_dirs: Vec<PathBuf> = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(format!("/run/user/{uid}"))])
        .collect();
    let mut sockets = vec![PathBuf::from(ROOTFUL_DOCKER)];
    sockets.extend(user_dirs.iter().map(|dir| dir.join("docker.sock")));
    sockets.extend(user_dirs.iter().map(|dir| dir.join("podman/podman.sock")));
    sockets.push(PathBuf::from("/run/podman/podman.sock"));
    sockets
}

/// mongo:7 as a replica set of one member, since allocations run in
/// transactions. The member is named localhost:27017, which means it only
/// inside the container, so clients connect directly (`directConnection`) to
/// the mapped port instead of discovering the set.
async fn start_container() -> Result<(Server, String, String), String> {
    let container = GenericImage::new("mongo", "7")
        .with_exposed_port(27017.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Waiting for connections"))
        .with_cmd(["--replSet", "rs0", "--bind_ip_all"])
        .start()
        .await
        .map_err(|e| e.to_string())?;
    initiate_replica_set(&container).await?;
    let host = container.get_host().await.map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(27017)
        .await
        .map_err(|e| e.to_string())?;
    let address = format!("{host}:{port}");
    let uri = format!("mongodb://{address}/?directConnection=true");
    wait_for_primary(&uri).await?;
    eprintln!("tests use a mongo:7 replica set (rs0) container at {address}");
    Ok((Server::Container(Box::new(container)), uri, address))
}

const RS_INITIATE: &str = "rs.initiate({_id:'rs0',members:[{_id:0,host:'localhost:27017'}]})";

/// Runs `rs.initiate` with mongosh inside the container, for at most 60 s.
async fn initiate_replica_set(container: &ContainerAsync<GenericImage>) -> Result<(), String> {
    let command = ExecCommand::new(["mongosh", "--quiet", "--eval", RS_INITIATE])
        .with_cmd_ready_condition(CmdWaitFor::exit());
    let run = async {
        let mut exec = container.exec(command).await.map_err(|e| e.to_string())?;
        if exec.exit_code().await.map_err(|e| e.to_string())? == Some(0) {
            return Ok(());
        }
        let stdout = exec.stdout_to_vec().await.unwrap_or_default();
        let stderr = exec.stderr_to_vec().await.unwrap_or_default();
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ))
    };
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(output)) => Err(format!("rs.initiate failed: {}", output.trim())),
        Err(_) => Err("rs.initiate did not finish within 60 s".to_owned()),
    }
}

/// Waits, at most 30 s, until the server at `uri` says it is a writable primary.
async fn wait_for_primary(uri: &str) -> Result<(), String> {
    let client = Client::with_uri_str(uri).await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let hello = client
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await;
        if hello.is_ok_and(|reply| reply.get_bool("isWritablePrimary").unwrap_or(false)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err("no writable primary within 30 s of rs.initiate".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn secantusd_path() -> PathBuf {
    std::env::var_os("ALLOT_SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/secantusd-py"))
}

async fn start_secantus(program: &Path) -> Result<(Server, String, String), String> {
    let port = crate::helpers::free_port();
    let log_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("secantusd.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut child = Command::new(program)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--storage-path", ":memory:", "--log-level", "WARNING"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let address = format!("127.0.0.1:{port}");
    let uri = format!("mongodb://{address}/?directConnection=true");
    let client = Client::with_uri_str(&uri)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .is_ok()
        {
            eprintln!(
                "tests use SecantusDB at {address} (log: {})",
                log_path.display()
            );
            return Ok((Server::Secantus(child), uri, address));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "SecantusDB exited with {status}; see {}",
                log_path.display()
            ));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "SecantusDB did not answer within 60 s; see {}",
                log_path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `host:port` of a single-host connection string.
fn address_of(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hosts = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    let first = hosts.split(',').next().unwrap_or(hosts);
    if first.contains(':') {
        first.to_owned()
    } else {
        format!("{first}:27017")
    }
}
