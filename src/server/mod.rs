//! Serves the poem endpoint over HTTP/1.1 and HTTP/2 (h2c) with bounded
//! connections: a cap on how many are open, a deadline for each request head,
//! an idle timeout, and bounded header memory.
//!
//! poem's own `Server` has none of these but an activity-based idle timeout
//! (which a client sending one byte a second never trips), and it spins when
//! `accept` fails for want of file descriptors. So allot drives hyper itself,
//! as poem does inside, with the bounds set. Why, what else was weighed, and
//! what it costs: docs/decisions/0003-driving-hyper-directly.md.
//!
//! - `accept`: the accept loop, the connection cap and shutdown;
//! - `connection`: one connection, hyper's protocol handling and its idle
//!   timeout;
//! - `app`: the endpoint as the connection calls it, one request at a time;
//! - `clock`: when a connection last did what, behind its head deadline
//!   and idle timeout, and the timer hyper's head deadline runs on;
//! - `raw_errors`: the socket wrapper that turns hyper's own answers to
//!   unparsable requests into JSON;
//! - `rlimit`: the open-file limit the connection cap relies on.

mod accept;
mod app;
mod clock;
mod connection;
mod raw_errors;
mod rlimit;

use std::time::Duration;

use crate::config::HttpSettings;

pub use accept::serve;
pub use app::App;
pub use rlimit::raise_open_file_limit;

/// The bounds every connection is served with (the `http.*` settings).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
}

impl From<&HttpSettings> for ConnectionLimits {
    fn from(http: &HttpSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_header_bytes: http.max_header_bytes,
            max_connections: http.max_connections,
            http2_max_concurrent_streams: http.http2_max_concurrent_streams,
        }
    }
}

#[cfg(test)]
mod tests {
    // The raw-error rewriting's tests, kept here so that their names stay
    // `server::tests::...`.
    use super::raw_errors::json_parse_error;

    #[test]
    fn hyper_s_empty_error_answers_become_json() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 08:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(json_parse_error(head, 16384).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Sun"));
        assert!(!head.contains("content-length: 0"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(body["message"].as_str().unwrap().contains("16384 bytes"));
    }

    #[test]
    fn answers_of_allot_s_own_are_left_alone() {
        let with_type =
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n";
        assert!(json_parse_error(with_type, 16384).is_none());
        let other = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert!(json_parse_error(other, 16384).is_none());
        assert!(json_parse_error(b"HTTP/1.1 400 Bad", 16384).is_none());
    }
}
