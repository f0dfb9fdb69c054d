//! hyper answers a request head it cannot parse itself, before the endpoint
//! sees it: an empty 400, 414 or 431. The socket wrapper here recognises that
//! answer among the bytes hyper writes and writes a JSON one in its place, so
//! that every error allot sends is JSON. It also tells the connection's clock
//! when bytes arrive.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::clock::ConnectionClock;

/// The socket, noting when bytes arrive, and turning hyper's own answers to
/// unparsable requests (empty 400, 414, 431) into JSON ones.
pub(super) struct Watched {
    inner: TcpStream,
    clock: Arc<ConnectionClock>,
    /// A JSON answer still to be written, and how much of it is.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Watched {
    pub(super) fn new(inner: TcpStream, clock: Arc<ConnectionClock>) -> Self {
        Self {
            inner,
            clock,
            replacement: None,
        }
    }

    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n =
                std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// When `buf` is hyper's answer to a head it could not parse, queues a
    /// JSON answer in its place and returns true.
    fn replace_parse_error(&mut self, buf: &[u8]) -> bool {
        if !buf.starts_with(b"HTTP/1.1 4") || !self.clock.reading_head() {
            return false;
        }
        let Some(replacement) = json_parse_error(buf, self.clock.limits.max_header_bytes) else {
            return false;
        };
        self.replacement = Some((replacement, 0));
        true
    }
}

/// The JSON version of hyper's automatic answer `head` (a status line and
/// headers, no body), or `None` when `head` is something else.
pub(super) fn json_parse_error(head: &[u8], max_header_bytes: usize) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let message = match status_line.get(9..12)? {
        "400" => "The request is not valid HTTP: a malformed request line or header".to_owned(),
        "414" => "The request URI is too long".to_owned(),
        "431" => format!(
            "The request head (request line and headers) is too large: at most {max_header_bytes} bytes"
        ),
        _ => return None,
    };
    let mut kept = Vec::new();
    for line in lines {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match name.as_str() {
            // An answer of allot's own always has a content type: leave it be.
            "content-type" => return None,
            "content-length" | "connection" => {}
            _ => kept.push(line),
        }
    }
    let body = serde_json::json!({ "message": message }).to_string();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n",
        body.len()
    );
    for line in kept {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if self.replace_parse_error(buf) {
            // hyper's bytes count as written; poll_flush finishes ours.
            if let Poll::Ready(Err(error)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty())
            && self.replace_parse_error(first)
        {
            if let Poll::Ready(Err(error)) = self.poll_replacement(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// No: hyper then writes each response (head and body) from one buffer
    /// in one `send`, as poem's own server does. For allot's small JSON
    /// bodies copying them costs less than the kernel's `writev` path.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
