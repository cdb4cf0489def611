//! The benchmark's HTTP client: one blocking keep-alive connection per thread, requests prepared
//! as bytes, answers read by `Content-Length`. It parses no JSON: the few fields the workload needs
//! (a run id, a gate id, a decision's effect) are found in the server's own compact JSON by name.
//! Kept this small so that, on a machine the server shares, the client costs little.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a request may wait for its answer before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request as sent on the wire.
pub fn request(method: &str, path: &str, token: &str, body: &str) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: fedcore\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// One keep-alive connection. It connects on first use and again after an I/O error, and
/// remembers whether any of its connections was never answered.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    /// Whether the current connection has been answered at least once.
    answered: bool,
    line: String,
    body: Vec<u8>,
    /// Connections opened, and those closed or broken before their first answer.
    pub opened: u64,
    pub unserved: u64,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            answered: false,
            line: String::new(),
            body: Vec::new(),
            opened: 0,
            unserved: 0,
        }
    }

    /// Sends `bytes` (a whole request) and returns the answer's status and body.
    pub fn call(&mut self, bytes: &[u8]) -> std::io::Result<(u16, &[u8])> {
        match self.exchange(bytes) {
            Ok(status) => {
                self.answered = true;
                Ok((status, &self.body))
            }
            Err(e) => {
                self.drop_connection();
                Err(e)
            }
        }
    }

    /// Closes the connection; one never answered counts as unserved.
    pub fn drop_connection(&mut self) {
        if self.stream.take().is_some() && !self.answered {
            self.unserved += 1;
        }
        self.answered = false;
    }

    fn exchange(&mut self, bytes: &[u8]) -> std::io::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, ANSWER_TIMEOUT)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
            self.stream = Some(BufReader::new(stream));
            self.answered = false;
            self.opened += 1;
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.get_mut().write_all(bytes)?;
        self.line.clear();
        if stream.read_line(&mut self.line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {:?}", self.line)))?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            if stream.read_line(&mut self.line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(std::io::Error::other)?;
                }
            }
        }
        self.body.resize(length, 0);
        stream.read_exact(&mut self.body)?;
        Ok(status)
    }
}

/// The string value of the first member named `name` in compact JSON `body`, e.g. the run id of
/// `{"run_id":"…",…}`. Good for the server's own answers, whose ids are plain ASCII.
pub fn string_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let at = find(body, key.as_bytes())? + key.len();
    let len = body[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[at..at + len]).ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_field_finds_the_first_member_by_name() {
        let body =
            br#"{"step":{"run_id":"r-1"},"decision":{"effect":"flag"},"gate":{"gate_id":"g-9"}}"#;
        assert_eq!(string_field(body, "run_id"), Some("r-1"));
        assert_eq!(string_field(body, "effect"), Some("flag"));
        assert_eq!(string_field(body, "gate_id"), Some("g-9"));
        assert_eq!(string_field(body, "missing"), None);
        assert_eq!(string_field(br#"{"gate":null}"#, "gate_id"), None);
    }

    #[test]
    fn a_request_carries_its_length_and_token() {
        let bytes = request("POST", "/x", "tok", "{\"a\":1}");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("POST /x HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer tok\r\n"));
        assert!(text.contains("Content-Length: 7\r\n\r\n{\"a\":1}"));
    }
}
