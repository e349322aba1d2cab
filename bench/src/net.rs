//! Plain networking for the tests and benchmarks: a free port of 127.0.0.1, a wait for a server
//! to listen, and HTTP calls without a client library (what a scraper or a team's own tool
//! sees).

#![allow(clippy::unwrap_used, clippy::expect_used)] // set-up helpers: a failure is the caller's

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A free port of 127.0.0.1 (nothing listens there once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `address` (`what` names it when nothing does within 30 s:
/// the deadline only stops a wait for a server that never listens).
pub fn wait_listening(address: &str, what: &str) {
    let started = std::time::Instant::now();
    while TcpStream::connect(address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET `path` from `address` (HTTP/1.0, so the answer ends with the connection): the status
/// line's code and the body, or None when nothing answered.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    http(address, "GET", path, None, "")
}

/// `method` `path` on `address` with an `Authorization: Bearer` token when given and `body`
/// (HTTP/1.0, so the answer ends with the connection): the status line's code and the body,
/// or None when nothing answered.
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_string()))
}
