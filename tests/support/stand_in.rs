//! The controls of a stand-in Hub run as `neuromfa hub serve` (its `/_stand-in/` routes),
//! over plain HTTP/1.1 so that a test sees exactly what the server answers.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;

use super::cluster::port_of;

/// One HTTP/1.1 request to 127.0.0.1:`port` over a fresh connection, with `headers` and
/// `body`; returns the status line and headers (lowercased) and the body.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    write!(stream, "{head}\r\n{body}").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

/// The stand-in at `hub_url`, asked with `token` when it requires one.
pub struct StandIn {
    port: u16,
    token: Option<String>,
}

impl StandIn {
    pub fn new(hub_url: &str, token: Option<&str>) -> StandIn {
        StandIn {
            port: port_of(hub_url),
            token: token.map(str::to_string),
        }
    }

    fn control(&self, method: &str, path: &str, body: &str) -> String {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend(bearer.as_deref().map(|b| ("Authorization", b)));
        let (head, body) = request(self.port, method, path, &headers, body);
        assert!(
            head.starts_with("http/1.1 200"),
            "{method} {path}: {head}\n{body}"
        );
        body
    }

    /// Its counters (`/_stand-in/stats`).
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.control("GET", "/_stand-in/stats", "")).unwrap()
    }

    /// Replaces the faults of `listener` (`hub` or `cdn`) with `plan` (a JSON fault plan).
    pub fn set_faults(&self, listener: &str, plan: serde_json::Value) {
        let path = format!("/_stand-in/faults/{listener}");
        self.control("PUT", &path, &plan.to_string());
    }

    /// Moves its clock `secs` forward: every URL it signed so far ends that much sooner.
    pub fn advance_clock(&self, secs: u64) {
        let path = format!("/_stand-in/clock?advance_secs={secs}");
        self.control("POST", &path, "");
    }
}
