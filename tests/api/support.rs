//! Shared test support: a temp directory, the real `fedcore` binary started on a free loopback port
//! over a fresh database, and a small blocking HTTP/1.1 client with keep-alive. Every test talks to
//! the server as an outside client would.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "fedcore-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fedcore")
}

/// Runs `fedcore ARGS` to completion and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run fedcore");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `fedcore serve` over a database in its own temp dir.
pub struct Server {
    pub addr: SocketAddr,
    pub db: PathBuf,
    child: Option<Child>,
    log: mpsc::Receiver<String>,
    _dir: Option<TempDir>,
}

impl Server {
    /// Starts a server over a fresh database in a new temp dir.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server over a fresh database with extra `serve` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = TempDir::new();
        let db = dir.path().join("fedcore.db");
        let mut server = Server::start_on(&db, extra);
        server._dir = Some(dir);
        server
    }

    /// Starts a server over the database at `db` (kept when the server stops).
    pub fn start_on(db: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fedcore serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => {
                        if tx.send(line).is_err() {
                            // Keep draining so the server never blocks on a full pipe.
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("server did not announce its address within 30 s");
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.trim().parse().expect("address in the listening line");
            }
        };
        Server {
            addr,
            db: db.to_path_buf(),
            child: Some(child),
            log: rx,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends SIGTERM and waits for the exit code (None if killed by a signal).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = child.wait().expect("wait for server");
        status.code()
    }

    /// Sends SIGKILL and waits.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Lines the server wrote to stderr so far (not blocking).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code of a contract error body, `{"error":{"code":…}}`.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
            .to_string()
    }
}

/// A blocking HTTP/1.1 client on one keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let writer = stream.try_clone().expect("clone stream");
        Client {
            addr,
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Sends one request with raw body bytes and extra headers; reconnects once if the server had
    /// closed the idle connection.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        match self.try_send(method, path, headers, body) {
            Ok(r) => r,
            Err(_) => {
                *self = Client::connect(self.addr);
                self.try_send(method, path, headers, body)
                    .expect("request after reconnect")
            }
        }
    }

    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.writer.write_all(&bytes)?;
        read_response(&mut self.reader)
    }

    /// A JSON request with `Content-Type: application/json`.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> Response {
        match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b).expect("encode");
                self.send(
                    method,
                    path,
                    &[("Content-Type", "application/json")],
                    &bytes,
                )
            }
            None => self.send(method, path, &[], &[]),
        }
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None)
    }
    pub fn post(&mut self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }
    pub fn put(&mut self, path: &str, body: &Value) -> Response {
        self.request("PUT", path, Some(body))
    }
    pub fn patch(&mut self, path: &str, body: &Value) -> Response {
        self.request("PATCH", path, Some(body))
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body).
pub fn read_response<R: BufRead>(reader: &mut R) -> std::io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = find("content-length") {
        let len: usize = len.parse().map_err(std::io::Error::other)?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            if size == 0 {
                line.clear();
                reader.read_line(&mut line)?;
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
