//! A small blocking HTTP/1.1 client on one keep-alive connection, enough for the proof to act as
//! a real client of the server it started: JSON requests, `Content-Length` responses, and a
//! bearer token on every request: the token of the actor the body names, else the admin's.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One answer: status and JSON body (`null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

pub struct Client {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
    /// Bearer tokens by name; `admin_token` is used when a body names no actor with a token.
    tokens: HashMap<String, String>,
    admin_token: String,
}

impl Client {
    pub fn connect(addr: SocketAddr, admin_token: String) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            addr,
            stream: BufReader::new(stream),
            tokens: HashMap::new(),
            admin_token,
        })
    }

    /// Requests whose body names `name` as actor are sent with `token` from now on.
    pub fn add_token(&mut self, name: &str, token: String) {
        self.tokens.insert(name.to_string(), token);
    }

    /// Sends `body` as JSON with method `method`.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<Answer> {
        let body_value = body;
        let body = match body {
            Some(v) => serde_json::to_vec(v).map_err(std::io::Error::other)?,
            None => Vec::new(),
        };
        let token = body_value
            .and_then(|b| b.get("actor")?.as_str())
            .and_then(|actor| self.tokens.get(actor))
            .unwrap_or(&self.admin_token);
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n",
            self.addr
        );
        if method != "GET" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        self.stream.get_mut().write_all(&bytes)?;
        self.read_answer()
    }

    fn read_answer(&mut self) -> std::io::Result<Answer> {
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(std::io::Error::other)?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok(Answer {
            status,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        })
    }
}
