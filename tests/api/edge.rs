//! The HTTP edge: bodies bounded on every protocol, connections bounded in
//! time and number, JSON for every error, and what operators and browsers
//! expect (request ids, metrics, CORS, security headers).

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{AllotProcess, allot_command, json, spawn_app_with};
use crate::session::session;

fn testing_process() -> std::process::Command {
    let mut command = allot_command();
    command
        .env("ALLOT_ENV", "testing")
        .env("ALLOT__MONGO__URI", &session().mongo_uri)
        .env("ALLOT__MONGO__DATABASE", session().new_database_name())
        .env("ALLOT__LOG__LEVEL", "info");
    command
}

/// POSTs `size` bytes with curl, streamed from its standard input (so no
/// Content-Length is sent), with the given protocol flag. Returns the status,
/// the HTTP version curl used and the response body.
fn curl_upload(url: &str, protocol: &str, size: usize) -> (String, String, String) {
    let mut curl = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", "-T", "-", protocol])
        .args(["-H", "Content-Type: application/json"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl is installed (scripts/test installs it)");
    let mut stdin = curl.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..size / chunk.len() {
            if stdin.write_all(&chunk).is_err() {
                break; // curl stopped sending: the server answered
            }
        }
    });
    let output = curl.wait_with_output().unwrap();
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, trailer) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut trailer = trailer.split(' ');
    (
        trailer.next().unwrap_or_default().to_owned(),
        trailer.next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

async fn a_40_mb_body_gets_413_json_over_h2c_and_chunked_with_bounded_memory() {
    let app = AllotProcess::start(&mut testing_process());
    let url = format!("{}/users/login", app.url);
    let started_kib = app.peak_rss_kib();
    for protocol in ["--http2-prior-knowledge", "--http1.1"] {
        let url = url.clone();
        let (status, version, body) =
            tokio::task::spawn_blocking(move || curl_upload(&url, protocol, 40 << 20))
                .await
                .unwrap();
        assert_eq!(status, "413", "{protocol}: {body}");
        let expected_version = if protocol == "--http1.1" { "1.1" } else { "2" };
        assert_eq!(version, expected_version, "{protocol}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["message"], "Request body is too large");
    }
    // Four at once over h2c.
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                curl_upload(&url, "--http2-prior-knowledge", 40 << 20)
            })
        })
        .collect();
    for upload in uploads {
        assert_eq!(upload.await.unwrap().0, "413");
    }
    let peak_kib = app.peak_rss_kib();
    eprintln!("peak RSS {started_kib} KiB at start, {peak_kib} KiB after 6 uploads of 40 MB");
    assert!(
        peak_kib < started_kib + 32 * 1024,
        "peak RSS grew from {started_kib} KiB to {peak_kib} KiB"
    );
}

/// Reads until the peer closes the connection; returns when, or `None` if it
/// was still open at `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_elapsed) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn idle_and_slow_connections_are_closed_while_requests_are_served() {
    let app = spawn_app_with(|settings| {
        settings.http.header_read_timeout_ms = 1000;
        settings.http.idle_timeout_ms = 3000;
    })
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();

    // A kept-alive connection, idle after one request.
    let mut kept = TcpStream::connect(&address).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = [0u8; 4096];
    let n = kept.read(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response[..n]).starts_with("HTTP/1.1 200"));
    let kept_idle_since = Instant::now();
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(&address).await.unwrap();
    // Sends a request head one byte at a time, 5 per second, forever.
    let slow = TcpStream::connect(&address).await.unwrap();
    let slow_writer = {
        let (mut reader, mut writer) = slow.into_split();
        let task = tokio::spawn(async move {
            let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await {
                Err(_) => break None,
                Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                Ok(Ok(_)) => {}
            }
        };
        task.abort();
        closed
    };

    // Meanwhile a normal request is served at once.
    let started = Instant::now();
    let (status, _) = json(app.get("/health").await).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a normal request took {:?}",
        started.elapsed()
    );

    let slow_closed = slow_writer.expect("the slow connection is closed within 5 s");
    assert!(
        slow_closed < Duration::from_millis(2500),
        "the slow head was cut after {slow_closed:?}"
    );
    let silent_closed = closed_within(&mut silent, Duration::from_secs(3))
        .await
        .expect("the silent connection is closed");
    eprintln!("silent connection closed after {silent_closed:?}, slow one after {slow_closed:?}");
    // The kept-alive one outlives the head deadline, then goes at the idle timeout.
    assert!(
        silent_closed < Duration::from_millis(2500),
        "the silent connection was cut after {silent_closed:?}"
    );
    let kept_for = kept_idle_since.elapsed()
        + closed_within(&mut kept, Duration::from_secs(5))
            .await
            .expect("the idle kept-alive connection is closed");
    eprintln!("idle kept-alive connection closed after {kept_for:?}");
    assert!(
        (Duration::from_millis(2500)..Duration::from_millis(4500)).contains(&kept_for),
        "an idle kept-alive connection is kept until http.idle_timeout_ms (3 s), not {kept_for:?}"
    );
}

async fn connections_over_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|settings| settings.http.max_connections = 2).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let first = TcpStream::connect(&address).await.unwrap();
    let second = TcpStream::connect(&address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn({
        let url = app.url("/health");
        async move {
            let started = Instant::now();
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served");
    drop(first);
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    drop(second);
}

/// What a raw HTTP/1.1 exchange answers: status line and body.
async fn raw_exchange(address: &str, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

async fn malformed_and_oversized_requests_get_json_errors() {
    let app = spawn_app_with(|settings| settings.http.max_header_bytes = 8192).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    for (request, status) in [
        (big_header.as_bytes(), "431"),
        (long_uri.as_bytes(), "431"),
        (&b"NOT A REQUEST LINE\r\n\r\n"[..], "400"),
        (&b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n"[..], "400"),
    ] {
        let (status_line, body) = raw_exchange(&address, request).await;
        assert!(
            status_line.starts_with(&format!("HTTP/1.1 {status}")),
            "{status_line}"
        );
        let body: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{status_line}: not JSON: {body:?}"));
        assert!(body["message"].is_string(), "{body}");
    }
    // A URI over hyper's 65,534 bytes, in a head the limit allows: 414.
    let roomy = spawn_app_with(|settings| settings.http.max_header_bytes = 100_000).await;
    let address = roomy.address.trim_start_matches("http://").to_owned();
    let huge_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let (status_line, body) = raw_exchange(&address, huge_uri.as_bytes()).await;
    assert!(status_line.starts_with("HTTP/1.1 414"), "{status_line}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["message"], "The request URI is too long");
}

/// A SecantusDB server of the test's own, which it can freeze (SIGSTOP).
struct OwnDatabase {
    child: Child,
    uri: String,
}

impl OwnDatabase {
    async fn start() -> Self {
        let port = crate::helpers::free_port();
        let child = std::process::Command::new(crate::session::secantusd_path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--storage-path", ":memory:", "--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("SecantusDB from .venv (scripts/setup-python installs it)");
        let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
        let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client
            .database("admin")
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "SecantusDB did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self { child, uri }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: sends a signal to the child this test started.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "signal {signal} sent");
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn requests_get_503_within_the_operation_timeout_while_the_database_is_frozen() {
    let database = OwnDatabase::start().await;
    let app = spawn_app_with(|settings| {
        settings.mongo.uri = database.uri.clone().into();
        settings.mongo.operation_timeout_ms = 1000;
    })
    .await;
    let user = app.new_user().await;
    // The admin role, granted in the test's own database (as the CLI would).
    let admin_name = crate::helpers::random_name("admin");
    app.register(&admin_name, crate::helpers::PASSWORD).await;
    mongodb::Client::with_uri_str(&database.uri)
        .await
        .unwrap()
        .database(app.database.name())
        .collection::<mongodb::bson::Document>("users")
        .update_one(
            mongodb::bson::doc! { "username": &admin_name },
            mongodb::bson::doc! { "$addToSet": { "roles": "admin" } },
        )
        .await
        .unwrap();
    let (status, body) = app.login(&admin_name, crate::helpers::PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let admin = crate::helpers::Tokens::from(&body);
    let batch = serde_json::json!({"reference": "frozen-1", "sku": "LAMP", "purchased_quantity": 10, "eta": null});
    let (status, body) = json(app.post_json("/batches", Some(&admin.access), &batch).await).await;
    assert_eq!(status, 201, "{body}");

    database.signal(libc::SIGSTOP);
    let line = serde_json::json!({"orderid": "o-1", "sku": "LAMP", "qty": 1});
    for (path, body) in [
        ("/allocate", Some(line)),
        ("/users/login", None),
        ("/batches/frozen-1", None),
    ] {
        let started = Instant::now();
        let response = match (path, &body) {
            ("/users/login", _) => {
                app.post_json(
                    path,
                    None,
                    &serde_json::json!({"username": "nobody-here", "password": "whatever1"}),
                )
                .await
            }
            (_, Some(body)) => app.post_json(path, Some(&user.access), body).await,
            (_, None) => {
                app.get_authorized(path, &format!("Bearer {}", user.access))
                    .await
            }
        };
        let waited = started.elapsed();
        let (status, body) = json(response).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body["message"].is_string(), "{body}");
        assert!(
            waited < Duration::from_millis(2500),
            "{path} waited {waited:?} with a 1 s operation timeout"
        );
        eprintln!("{path}: 503 after {waited:?}");
    }

    database.signal(libc::SIGCONT);
    let (status, body) = json(
        app.get_authorized("/batches/frozen-1", &format!("Bearer {}", user.access))
            .await,
    )
    .await;
    assert_eq!(
        status, 200,
        "served again once the database is back: {body}"
    );
}

async fn an_eta_the_database_cannot_store_is_a_400_naming_the_field() {
    let app = crate::helpers::spawn_app().await;
    let admin = app.new_admin().await;
    for eta in ["0000-01-01", "-0001-12-31", "+10000-01-01", "-262143-01-01"] {
        let batch = serde_json::json!({"reference": crate::helpers::random_name("b"), "sku": "DESK", "purchased_quantity": 5, "eta": eta});
        let (status, body) =
            json(app.post_json("/batches", Some(&admin.access), &batch).await).await;
        assert_eq!(status, 400, "{eta}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("eta"), "{eta}: {message}");
    }
    let (count, _) = (
        app.database
            .collection::<mongodb::bson::Document>("batches")
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        (),
    );
    assert_eq!(count, 0, "nothing was stored");
    for eta in ["0001-01-01", "9999-12-31"] {
        let batch = serde_json::json!({"reference": crate::helpers::random_name("b"), "sku": "DESK", "purchased_quantity": 5, "eta": eta});
        let (status, body) =
            json(app.post_json("/batches", Some(&admin.access), &batch).await).await;
        assert_eq!((status, body["eta"].as_str()), (201, Some(eta)), "{body}");
    }
}

async fn allot_serves_from_an_empty_directory_in_development() {
    let empty = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("empty-{}", crate::helpers::random_name("dir")));
    std::fs::create_dir_all(&empty).unwrap();
    let mut command = allot_command();
    command
        .current_dir(&empty)
        .env("ALLOT__MONGO__URI", &session().mongo_uri)
        // Isolation only: a free port, and a database the session drops.
        .env("ALLOT__HTTP__PORT", "0")
        .env("ALLOT__MONGO__DATABASE", session().new_database_name());
    let app = AllotProcess::start(&mut command);
    let log = app.log.lock().unwrap().join("");
    assert!(log.contains("development"), "{log}");
    let response = reqwest::get(format!("{}/tests/hello", app.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(app);
    std::fs::remove_dir_all(&empty).unwrap();
}

async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|settings| {
        settings.http.header_read_timeout_ms = 500;
        settings.http.idle_timeout_ms = 1500;
    })
    .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut h2 = TcpStream::connect(&address).await.unwrap();
    // The client preface and an empty SETTINGS frame, then silence.
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let started = Instant::now();
    let mut first = [0u8; 9];
    h2.read_exact(&mut first).await.unwrap();
    assert_eq!(
        first[3], 4,
        "the server speaks HTTP/2: its SETTINGS frame first"
    );
    let closed = closed_within(&mut h2, Duration::from_secs(5))
        .await
        .map(|_| started.elapsed())
        .expect("the idle HTTP/2 connection is closed");
    eprintln!("idle HTTP/2 connection closed after {closed:?}");
    assert!(
        (Duration::from_millis(1200)..Duration::from_millis(4000)).contains(&closed),
        "closed after {closed:?}, not at http.idle_timeout_ms (1.5 s)"
    );

    // PINGs every 200 ms bring no request: the connection is idle all the same.
    let h2 = TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = h2.into_split();
    let pinger = tokio::spawn(async move {
        writer
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await?;
        writer.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
        writer.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await?; // SETTINGS ACK
        loop {
            writer
                .write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
                .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(6), reader.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    };
    pinger.abort();
    let closed = closed.expect("a connection sending only PINGs is closed");
    eprintln!("HTTP/2 connection sending only PINGs closed after {closed:?}");
    assert!(
        (Duration::from_millis(1200)..Duration::from_millis(4000)).contains(&closed),
        "closed after {closed:?}"
    );
}

/// This module's tests, in the order the harness lists them.
pub fn trials() -> Vec<libtest_mimic::Trial> {
    trials!(edge: [
        a_40_mb_body_gets_413_json_over_h2c_and_chunked_with_bounded_memory,
        idle_and_slow_connections_are_closed_while_requests_are_served,
        connections_over_the_cap_wait_until_one_closes,
        malformed_and_oversized_requests_get_json_errors,
        requests_get_503_within_the_operation_timeout_while_the_database_is_frozen,
        an_eta_the_database_cannot_store_is_a_400_naming_the_field,
        allot_serves_from_an_empty_directory_in_development,
        an_idle_http2_connection_is_closed_after_the_idle_timeout,
    ])
}
