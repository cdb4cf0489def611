//! Shared test support: a temp directory, the real `fedcore` binary started on a free loopback port
//! over a fresh database, and a small blocking HTTP/1.1 client with keep-alive. Every test talks to
//! the server as an outside client would.
//!
//! Every request but `GET /health` needs a bearer token, and the token decides who acts. So that
//! tests can keep saying who acts the way they always did (a body `actor`, or `X-Actor`), the
//! client picks the token for them: it reads the actor the request names and sends a token of
//! that name, made on first use through the admin API with the admin token `serve` wrote beside
//! the database. The role follows the name (`role_for`); `Client::use_role` asks for another.
//! A request that names no actor goes with the admin token. `Client::send_unauthenticated` sends
//! exactly what it is given.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
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

/// Runs `fedcore verify --json --db DB EXTRA…` and returns the exit code and the parsed report.
pub fn verify_json(db: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "--json", "--db", db.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli(&args);
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): exit {code}\n{out}\n{err}"));
    (code, report)
}

/// The names of the files in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A running `fedcore serve` over a database in its own temp dir.
pub struct Server {
    pub addr: SocketAddr,
    pub db: PathBuf,
    auth: Arc<Tokens>,
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

    /// Starts a server over the database at `db` (kept when the server stops). A database that
    /// exists without an admin token file beside it (a copy, say) gets an admin token from
    /// `fedcore token create` first; a restart over the same path reuses the tokens made before.
    pub fn start_on(db: &Path, extra: &[&str]) -> Server {
        let known = tokens_of_db(db);
        let mut admin = known.as_ref().map(|t| t.admin.clone());
        if admin.is_none() && db.exists() && !admin_token_file(db).exists() {
            let db_text = db.to_str().expect("a UTF-8 temp path");
            let (code, out, err) = run_cli(&[
                "token", "create", "--name", "admin", "--role", "admin", "--db", db_text,
            ]);
            assert_eq!(code, 0, "fedcore token create for {db_text}: {err}");
            admin = Some(out.trim().to_string());
        }
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
        let auth = known.unwrap_or_else(|| {
            let admin = admin.unwrap_or_else(|| {
                std::fs::read_to_string(admin_token_file(db))
                    .expect("serve writes <db>.admin-token on a new database")
                    .trim()
                    .to_string()
            });
            let tokens = Arc::new(Tokens {
                admin,
                made: Mutex::new(HashMap::new()),
            });
            registry()
                .lock()
                .unwrap()
                .1
                .insert(db.to_path_buf(), tokens.clone());
            tokens
        });
        registry().lock().unwrap().0.insert(addr, auth.clone());
        Server {
            addr,
            db: db.to_path_buf(),
            auth,
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

    /// The admin token `serve` wrote beside the database (or the test support made).
    pub fn admin_token(&self) -> &str {
        &self.auth.admin
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

/// `<db>.admin-token`, where `serve` writes the admin token of a new database.
pub fn admin_token_file(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".admin-token");
    PathBuf::from(path)
}

/// The role a name gets its token with, unless a test asks otherwise: `approver…` approve,
/// `admin…` administer, `auditor…` only read, and every other name is an agent.
pub fn role_for(name: &str) -> &'static str {
    ["approver", "admin", "auditor"]
        .into_iter()
        .find(|role| name.starts_with(role))
        .unwrap_or("agent")
}

/// The tokens known for one database: its admin token, and those made for names on demand.
struct Tokens {
    admin: String,
    /// (name, role) → token.
    made: Mutex<HashMap<(String, String), String>>,
}

/// Tokens by server address (so `Client::connect(addr)` finds them) and by database path (so a
/// server restarted over the same file keeps them).
#[allow(clippy::type_complexity)]
fn registry() -> &'static Mutex<(
    HashMap<SocketAddr, Arc<Tokens>>,
    HashMap<PathBuf, Arc<Tokens>>,
)> {
    static REGISTRY: OnceLock<
        Mutex<(
            HashMap<SocketAddr, Arc<Tokens>>,
            HashMap<PathBuf, Arc<Tokens>>,
        )>,
    > = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn tokens_of_db(db: &Path) -> Option<Arc<Tokens>> {
    registry().lock().unwrap().1.get(db).cloned()
}

/// A blocking HTTP/1.1 client on one keep-alive connection, authenticating as the actor each
/// request names (see the module doc).
pub struct Client {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tokens: Option<Arc<Tokens>>,
    /// Roles asked for with `use_role`, by name.
    roles: HashMap<String, String>,
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
            tokens: registry().lock().unwrap().0.get(&addr).cloned(),
            roles: HashMap::new(),
        }
    }

    /// From now on, requests acting as `name` carry a token of `role` (made on first use).
    pub fn use_role(&mut self, name: &str, role: &str) {
        self.roles.insert(name.to_string(), role.to_string());
    }

    /// `Bearer <token>` for `name` in the role it would be sent with.
    pub fn bearer_for(&mut self, name: &str) -> String {
        let role = self.role_of(name);
        format!(
            "Bearer {}",
            self.token(name, &role).expect("a token for a valid name")
        )
    }

    /// `Bearer <admin token>`.
    pub fn admin_bearer(&self) -> String {
        format!(
            "Bearer {}",
            self.tokens
                .as_ref()
                .expect("a server started by the support")
                .admin
        )
    }

    fn role_of(&self, name: &str) -> String {
        self.roles
            .get(name)
            .cloned()
            .unwrap_or_else(|| role_for(name).to_string())
    }

    /// A token of `name` in `role`, made through `POST /tokens` on first use; `None` when the
    /// server refuses to make one (a name that is not a valid id).
    pub fn token(&mut self, name: &str, role: &str) -> Option<String> {
        let tokens = self
            .tokens
            .clone()
            .expect("a server started by the support");
        if name == "admin" && role == "admin" {
            return Some(tokens.admin.clone());
        }
        let mut made = tokens.made.lock().unwrap_or_else(|p| p.into_inner());
        let key = (name.to_string(), role.to_string());
        if let Some(token) = made.get(&key) {
            return Some(token.clone());
        }
        let body = serde_json::json!({"name": name, "role": role}).to_string();
        let admin = format!("Bearer {}", tokens.admin);
        let resp = Client::connect(self.addr).send_unauthenticated(
            "POST",
            "/tokens",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &admin),
            ],
            body.as_bytes(),
        );
        if resp.status != 201 {
            return None;
        }
        let token = resp.json()["token"].as_str()?.to_string();
        made.insert(key, token.clone());
        Some(token)
    }

    /// The `Authorization` value for a request: the token of the actor it names (body `actor`,
    /// else `X-Actor`), or the admin token when it names none or one no token can be made for.
    pub fn authorization(&mut self, headers: &[(&str, &str)], body: &[u8]) -> String {
        let stated = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("actor")?.as_str().map(str::to_string))
            .or_else(|| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("x-actor"))
                    .map(|(_, v)| v.to_string())
            });
        if let Some(name) = stated {
            let role = self.role_of(&name);
            if let Some(token) = self.token(&name, &role) {
                return format!("Bearer {token}");
            }
        }
        self.admin_bearer()
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
        self.with_one_reconnect(|c| c.try_send(method, path, headers, body))
    }

    /// `send` without the reconnect, authenticating as `send` does unless `headers` already
    /// carry an `Authorization`.
    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        if self.tokens.is_none()
            || headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            return self.try_send_unauthenticated(method, path, headers, body);
        }
        let authorization = self.authorization(headers, body);
        let mut with_auth = headers.to_vec();
        with_auth.push(("Authorization", &authorization));
        self.try_send_unauthenticated(method, path, &with_auth, body)
    }

    /// Sends exactly `headers` (no token added); reconnects once like `send`.
    pub fn send_unauthenticated(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.with_one_reconnect(|c| c.try_send_unauthenticated(method, path, headers, body))
    }

    /// Runs `attempt`; if the server had closed the idle connection, reconnects (keeping the
    /// tokens and roles this client knows) and runs it once more.
    fn with_one_reconnect(
        &mut self,
        attempt: impl Fn(&mut Client) -> std::io::Result<Response>,
    ) -> Response {
        match attempt(self) {
            Ok(r) => r,
            Err(_) => {
                let (tokens, roles) = (self.tokens.clone(), std::mem::take(&mut self.roles));
                *self = Client::connect(self.addr);
                (self.tokens, self.roles) = (tokens, roles);
                attempt(self).expect("request after reconnect")
            }
        }
    }

    pub fn try_send_unauthenticated(
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
