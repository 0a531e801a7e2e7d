//! What every integration test needs: a private `redis-server`, a fresh SQLite file, and
//! the API served on a port of its own. Real stores only.

#![allow(dead_code)]

pub mod cluster;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence::api::{self, ApiArgs, AppState};
use presence::config::{StoreArgs, TtlArgs};
use presence::diff::VanishGuard;
use presence::keys::KeyLayout;
use presence::snapshot::{RunSummary, SnapshotError, SnapshotOptions};
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
        TestApi::start_at(redis.url(), db, ttl).await
    }

    /// Serves the API against the Redis at `redis_url` (one server or a cluster).
    pub async fn start_at(redis_url: String, db: &TestDb, ttl: TtlArgs) -> TestApi {
        let args = ApiArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            ping_interval: None,
            max_batch: api::DEFAULT_MAX_BATCH,
            store: StoreArgs {
                redis_url,
                ..store_args_at(db)
            },
            ttl,
        };
        let state = Arc::new(AppState::open(&args).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = api::router(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(listener, app).await });
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
