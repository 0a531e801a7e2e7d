//! What every integration test needs: a private `redis-server`, a fresh SQLite file, and
//! the API served on a port of its own. Real stores only.

#![allow(dead_code, unused_imports)]

mod logged;

pub use logged::{LoggedApi, Proc, snapshot_proc};

pub mod cluster;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence::api::auth::{self, AuthArgs};
use presence::api::limits::LimitArgs;
use presence::api::server::{self, ConnectionLimits};
use presence::api::{self, ApiArgs, AppState};
use presence::config::{StoreArgs, TtlArgs};
use presence::diff::VanishGuard;
use presence::keys::KeyLayout;
pub use presence::snapshot::SnapshotOptions;
use presence::snapshot::{RunSummary, SnapshotError};
use tempfile::TempDir;

/// The key prefix tests use.
pub const PREFIX: &str = "presence:";

/// A `redis-server` of the test's own: a free port, no persistence, its files in a temp
/// dir, killed on drop.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for redis"),
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_until_up(&log);
    }

    fn wait_until_up(&self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut con) = self.client().get_connection()
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        panic!(
            "redis-server on port {} never came up; its log:\n{text}",
            self.port
        );
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A client of the server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// A synchronous connection, for setting up and inspecting keys.
    pub fn con(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    /// Kills the server (as a crash would), keeping its port for [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh database path in a temp dir of its own.
pub struct TestDb {
    dir: TempDir,
}

impl TestDb {
    /// A new, not yet created database.
    pub fn new() -> TestDb {
        TestDb {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Its path.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("presence.db")
    }

    /// A connection for inspecting it.
    pub fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path()).unwrap()
    }

    /// The durable last-seen of `user`.
    pub fn last_seen(&self, user: &str) -> Option<i64> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row(
                "SELECT last_seen_ms FROM last_seen WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
    }

    /// All closed sessions as (user, started, ended), ordered.
    pub fn sessions(&self) -> Vec<(String, i64, i64)> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT user_id, started_ms, ended_ms FROM sessions ORDER BY 1, 2")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The whole durable state, as text, for comparing two databases.
    pub fn dump(&self) -> String {
        let conn = self.conn();
        let mut out = String::new();
        for (table, order) in [
            ("last_seen", "user_id, last_seen_ms"),
            ("online_users", "user_id, since_ms, last_heartbeat_ms"),
            ("sessions", "user_id, started_ms, ended_ms"),
        ] {
            let sql = format!("SELECT {order} FROM {table} ORDER BY {order}");
            let mut stmt = conn.prepare(&sql).unwrap();
            let width = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    let cells: Vec<String> = (0..width)
                        .map(|i| {
                            r.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(cells.join(","))
                })
                .unwrap();
            for row in rows {
                out.push_str(&format!("{table}: {}\n", row.unwrap()));
            }
        }
        out
    }
}

/// The TTLs tests use: a real TTL must pass in some tests, so seconds, not minutes.
pub fn short_ttls(online: u64, shadow: u64) -> TtlArgs {
    TtlArgs {
        online_ttl: online,
        shadow_ttl: shadow,
    }
}

/// Store options for `redis` and `db`.
pub fn store_args(redis: &RedisServer, db: &TestDb) -> StoreArgs {
    StoreArgs {
        redis_url: redis.url(),
        ..store_args_at(db)
    }
}

/// Store options for `db`, with the default Redis URL.
fn store_args_at(db: &TestDb) -> StoreArgs {
    StoreArgs {
        redis_url: presence::config::DEFAULT_REDIS_URL.to_owned(),
        key_prefix: PREFIX.to_owned(),
        db: db.path(),
        busy_timeout_ms: 1000,
    }
}

/// API options against `redis` and `db`: authentication off, default limits. Tests that
/// need auth or other limits change the fields they care about.
pub fn api_args(redis: &RedisServer, db: &TestDb, ttl: TtlArgs) -> ApiArgs {
    let mut args = api_args_at(db, ttl);
    args.store.redis_url = redis.url();
    args
}

/// [`api_args`] with the default Redis URL, for tests that bring their own Redis.
pub fn api_args_at(db: &TestDb, ttl: TtlArgs) -> ApiArgs {
    ApiArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        ping_interval: None,
        max_batch: api::DEFAULT_MAX_BATCH,
        worker_threads: None,
        write_batch: presence::heartbeat_queue::DEFAULT_WRITE_BATCH,
        writes_in_flight: presence::heartbeat_queue::DEFAULT_WRITES_IN_FLIGHT,
        store: store_args_at(db),
        ttl,
        auth: AuthArgs {
            insecure_no_auth: true,
            ..auth_defaults()
        },
        limits: LimitArgs::default(),
        web: presence::web::WebArgs::default(),
    }
}

/// The auth options as the flags default them: no key, admin claim `scope`.
pub fn auth_defaults() -> AuthArgs {
    AuthArgs {
        jwt_leeway: auth::DEFAULT_LEEWAY_SECS,
        token_cache: auth::DEFAULT_TOKEN_CACHE,
        admin_claim: auth::DEFAULT_ADMIN_CLAIM.to_owned(),
        admin_value: auth::DEFAULT_ADMIN_VALUE.to_owned(),
        ..AuthArgs::default()
    }
}

/// The API, served in this process on a port of its own.
pub struct TestApi {
    /// The base URL, `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// The state the router serves, for tests that reach past HTTP.
    pub state: Arc<AppState>,
}

impl TestApi {
    /// Serves the API against `redis` and `db` with the given TTLs.
    pub async fn start(redis: &RedisServer, db: &TestDb, ttl: TtlArgs) -> TestApi {
        TestApi::serve(api_args(redis, db, ttl)).await
    }

    /// Serves the API against the Redis at `redis_url` (one server or a cluster).
    pub async fn start_at(redis_url: String, db: &TestDb, ttl: TtlArgs) -> TestApi {
        let mut args = api_args_at(db, ttl);
        args.store.redis_url = redis_url;
        TestApi::serve(args).await
    }

    /// Serves the API as `args` say, through the same accept loop as the binary.
    pub async fn serve(args: ApiArgs) -> TestApi {
        let state = Arc::new(AppState::open(&args).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = api::router(Arc::clone(&state));
        let limits = ConnectionLimits {
            header_read_timeout: args.limits.header_read_timeout(),
            max_connections: args.limits.max_connections,
            shutdown_grace: Duration::from_secs(1),
        };
        let never = std::future::pending();
        tokio::spawn(server::serve_connections(listener, app, limits, never));
        TestApi {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            state,
        }
    }

    /// `POST /v1/users/{user}/ping`, returning status and JSON body.
    pub async fn ping(&self, user: &str) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .post(format!("{}/v1/users/{user}/ping", self.base)),
        )
        .await
    }

    /// `POST /v1/users/{user}/offline`.
    pub async fn offline(&self, user: &str) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .post(format!("{}/v1/users/{user}/offline", self.base)),
        )
        .await
    }

    /// `GET /v1/users/{user}/presence`.
    pub async fn presence(&self, user: &str) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .get(format!("{}/v1/users/{user}/presence", self.base)),
        )
        .await
    }

    /// `POST /v1/presence/query` with `body`.
    pub async fn query(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .post(format!("{}/v1/presence/query", self.base))
                .json(&body),
        )
        .await
    }

    /// Sends any request, returning status and JSON body (`Null` when not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }
}

/// Snapshot options against `db`, with a guard that never fires unless a test asks.
pub fn snapshot_options(db: &TestDb) -> SnapshotOptions {
    SnapshotOptions {
        db: db.path(),
        busy_timeout: Duration::from_secs(1),
        keys: KeyLayout::new(PREFIX),
        scan_count: 100,
        guard: VanishGuard {
            max_share: 1.0,
            min_users: u64::MAX,
            accept: false,
        },
        full: false,
        progress: false,
    }
}

/// Runs one snapshot in this process.
pub async fn snapshot(
    redis: &RedisServer,
    opts: &SnapshotOptions,
) -> Result<RunSummary, SnapshotError> {
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    presence::snapshot::run_once(&mut con, opts).await
}

/// Parses an RFC 3339 string from a response into milliseconds.
pub fn ms(value: &serde_json::Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected a time, got {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

/// Polls `check` every 50 ms for up to `limit`; true once it holds. For waiting on a
/// real Redis TTL or a reconnect, never for judging speed.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An HS256 secret for tests, at least 32 bytes as the API demands.
pub const TEST_SECRET: &str = "a-test-secret-of-at-least-32-bytes-long";

/// Writes [`TEST_SECRET`] to a file in `dir` and returns its path.
pub fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("jwt-secret");
    std::fs::write(&path, format!("{TEST_SECRET}\n")).unwrap();
    path
}

/// A token signed with [`TEST_SECRET`] for `claims`.
pub fn hs256_token(claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

/// Seconds since the epoch, `offset` seconds from now, for `exp` claims.
pub fn epoch_secs(offset: i64) -> i64 {
    chrono::Utc::now().timestamp() + offset
}

/// A user token good for an hour.
pub fn user_token(user: &str) -> String {
    hs256_token(&serde_json::json!({"sub": user, "exp": epoch_secs(3600)}))
}

/// A back-end service token with the admin scope, good for an hour.
pub fn admin_token() -> String {
    hs256_token(&serde_json::json!({
        "sub": "presence-backend",
        "scope": "read presence:admin",
        "exp": epoch_secs(3600),
    }))
}

/// A small seeded random generator (splitmix64), so a failing random test replays.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`; the seed is printed, for replaying a failure.
    pub fn seeded(seed: u64) -> Rng {
        eprintln!("random seed: {seed}");
        Rng(seed)
    }

    /// A seed from `PRESENCE_TEST_SEED` or the given default.
    pub fn from_env_or(default: u64) -> Rng {
        let seed = std::env::var("PRESENCE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        Rng::seeded(seed)
    }

    /// A generator of its own, seeded from this one (so replaying the parent replays it).
    pub fn split(&mut self) -> Rng {
        Rng(self.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The `presence-api` binary, run as a process of its own on a free port; killed on drop.
pub struct ApiProcess {
    /// The base URL.
    pub base: String,
    /// The child process.
    pub child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl ApiProcess {
    /// Starts the binary with `args` (besides `--listen`) and waits until it answers.
    pub async fn start(args: &[String]) -> ApiProcess {
        ApiProcess::start_logging(args, "warn").await
    }

    /// Starts the binary with `args`, logging at `level` into [`ApiProcess::log_text`].
    pub async fn start_logging(args: &[String], level: &str) -> ApiProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("api.log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_presence-api"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("RUST_LOG", level)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let api = ApiProcess {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let up = eventually(Duration::from_secs(20), || async {
            http.get(format!("{}/healthz", api.base))
                .send()
                .await
                .is_ok()
        })
        .await;
        assert!(
            up,
            "presence-api never came up; its log:\n{}",
            api.log_text()
        );
        api
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its resident memory in KiB, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base arguments for either binary against `redis` and `db`.
pub fn store_flags(redis: &RedisServer, db: &Path) -> Vec<String> {
    vec![
        "--redis-url".into(),
        redis.url(),
        "--db".into(),
        db.display().to_string(),
        "--key-prefix".into(),
        PREFIX.into(),
    ]
}

/// A `presence-snapshot` command against `redis` and `db`, logging at warn level; the
/// subcommand and its flags are the caller's.
pub fn snapshot_command(redis: &RedisServer, db: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presence-snapshot"));
    cmd.args(store_flags(redis, db)).env("RUST_LOG", "warn");
    cmd
}

/// Runs `presence-snapshot run` with `extra` flags to the end: exit code, stdout, stderr.
pub fn snapshot_run(redis: &RedisServer, db: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = snapshot_command(redis, db)
        .arg("run")
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `last_seen` row of a database, ordered.
pub fn last_seen_rows(db: &Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT user_id, last_seen_ms FROM last_seen ORDER BY user_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// `PRAGMA integrity_check` of a database: "ok" when sound.
pub fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Opens a raw TCP connection to `base` (`http://host:port`) and writes `bytes`; for
/// requests no HTTP client would send (half a header, a body cut short).
pub async fn raw_connection(base: &str, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads what the server sends until it closes the connection, for at most `limit` (a
/// guard against a hung test, not a measurement); `None` if it never closed.
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// Calls of the ping and offline scripts Redis has served since `CONFIG RESETSTAT`.
pub fn script_calls(redis: &RedisServer) -> u64 {
    command_calls(redis, "evalsha") + command_calls(redis, "eval")
}

/// Calls of the command `name` (lower case) Redis has served since `CONFIG RESETSTAT`,
/// counting those made from inside scripts.
pub fn command_calls(redis: &RedisServer, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.con())
        .unwrap();
    let prefix = format!("cmdstat_{name}:calls=");
    info.lines()
        .filter_map(|l| {
            l.strip_prefix(&prefix)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Redis's clock, in milliseconds.
pub fn redis_now_ms(redis: &RedisServer) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut redis.con()).unwrap();
    secs * 1000 + micros / 1000
}

/// A small tmpfs mounted on a temp dir, for a disk that fills or turns read-only; unmounted
/// on drop. `None`, with the reason printed, where mounting is not permitted.
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount` takes it: `1m`, `512k`).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                eprintln!("skipped: cannot mount a tmpfs here (needs root): {why}");
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts read-only (`true`) or read-write.
    pub fn set_read_only(&self, read_only: bool) {
        let mode = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let status = Command::new("mount")
            .args(["-o", mode])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {mode} failed");
    }

    /// Fills the file system with a filler file until it is full; returns the filler.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while file
            .write_all(&block)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Simulated users changing the keyspace through the real ping and offline scripts, with
/// no HTTP in between, for tests that need thousands of changes quickly.
pub struct Crowd {
    users: Vec<presence::user::UserId>,
    online: Vec<bool>,
    writer: presence::heartbeat::HeartbeatWriter,
    con: redis::aio::MultiplexedConnection,
}

impl Crowd {
    /// `size` users, none seen yet, with long TTLs so nothing expires during a test.
    pub async fn new(redis: &RedisServer, size: usize) -> Crowd {
        let users = (0..size)
            .map(|i| presence::user::UserId::parse(&format!("c{i:05}")).unwrap())
            .collect();
        let writer = presence::heartbeat::HeartbeatWriter::new(
            KeyLayout::new(PREFIX),
            Duration::from_secs(3600),
            Duration::from_secs(7200),
        );
        let con = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Crowd {
            users,
            online: vec![false; size],
            writer,
            con,
        }
    }

    /// Every user pings once.
    pub async fn all_ping(&mut self) {
        for i in 0..self.users.len() {
            self.ping(i).await;
        }
    }

    /// `changes` random users act: an online user pings again or goes offline, an offline
    /// one comes back.
    pub async fn round(&mut self, rng: &mut Rng, changes: usize) {
        for _ in 0..changes {
            let i = rng.below(self.users.len() as u64) as usize;
            if self.online[i] && rng.chance(0.5) {
                self.writer
                    .record_offline(&mut self.con, &self.users[i])
                    .await
                    .unwrap();
                self.online[i] = false;
            } else {
                self.ping(i).await;
            }
        }
    }

    async fn ping(&mut self, i: usize) {
        self.writer
            .record_ping(&mut self.con, &self.users[i])
            .await
            .unwrap();
        self.online[i] = true;
    }
}

/// The sums of `came_online` and `went_offline` over every logged run of a database.
pub fn run_totals(db: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT COALESCE(SUM(came_online), 0), COALESCE(SUM(went_offline), 0) FROM runs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Rows of the `runs` log of a database.
pub fn run_count(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .unwrap_or(0)
}

/// Sends SIGTERM to `child`, as a service manager stopping it would.
pub fn terminate(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid this test spawned and has not yet waited for.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "sending SIGTERM to {pid}");
}

/// Writes the five states a walk can find a user in, one user each, by name: a shadow
/// value whose presence-key deadline is ahead; one whose deadline has passed, beside a
/// presence key that says otherwise; one ended by an offline call; and two values an
/// earlier version wrote, without a deadline, with and without a presence key. Key by key,
/// so that it works on a cluster too.
pub async fn seed_online_states<C>(con: &mut C, now: i64, names: &[&str; 5])
where
    C: redis::aio::ConnectionLike + Send,
{
    let [ahead, passed, left, old_on, old_off] = *names;
    let seen = |user: &str| format!("{PREFIX}seen:{{{user}}}");
    let on = |user: &str| format!("{PREFIX}on:{{{user}}}");
    let writes = [
        (seen(ahead), format!("{now}:{now}::{}", now + 60_000)),
        (seen(passed), format!("{now}:{now}::{}", now - 1)),
        (on(passed), format!("{now}:")),
        (seen(left), format!("{now}:{now}::0")),
        (seen(old_on), format!("{now}:{now}:")),
        (on(old_on), format!("{now}:")),
        (seen(old_off), format!("{now}:{now}:")),
    ];
    for (key, value) in writes {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(con)
            .await
            .unwrap();
    }
}
