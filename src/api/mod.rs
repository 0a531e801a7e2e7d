//! The HTTP API: heartbeats in, presence out.
//!
//! [`router`] builds the whole application from an [`AppState`], so tests drive it on a
//! port of their own; [`serve`] adds the listener and graceful shutdown.
//!
//! [`auth`] says who is calling, [`limits`] keeps any one client from taking more than its
//! share, and [`server`] accepts connections with a header-read timeout and a cap.

pub mod auth;
mod error;
pub mod limits;
mod openapi;
mod routes;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use clap::Args;

pub use error::ApiError;
pub use openapi::ApiDoc;

use self::auth::{AuthArgs, Authenticator};
use self::limits::{LimitArgs, PingLimiter, RequestGuard};

use crate::config::{StoreArgs, TtlArgs};
use crate::db::DbReader;
use crate::heartbeat::HeartbeatWriter;
use crate::heartbeat_queue::{
    DEFAULT_WRITE_BATCH, DEFAULT_WRITES_IN_FLIGHT, HeartbeatQueue, QueueLimits,
};
use crate::redis_conn::{RedisConn, redact_url};
use crate::status::StatusReader;

/// The default address the API listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The most users one batch query may ask about.
pub const DEFAULT_MAX_BATCH: usize = 1000;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Options of `presence-api`.
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Address and port to listen on.
    #[arg(long, env = "PRESENCE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Seconds a client should wait between pings; told to clients in every ping
    /// response. Defaults to a tenth of the online TTL, so nine pings in a row may be lost
    /// before a user shows offline.
    #[arg(long, env = "PRESENCE_PING_INTERVAL")]
    pub ping_interval: Option<u64>,

    /// Most user ids in one batch query.
    #[arg(long, env = "PRESENCE_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,

    /// Threads serving requests; one per core when unset. On a machine shared with
    /// Redis, leaving Redis a core of its own costs the API less CPU per request.
    #[arg(long, env = "PRESENCE_WORKER_THREADS",
        value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Most heartbeats of concurrent requests sent to Redis in one script call; 1 sends
    /// every heartbeat alone.
    #[arg(long, env = "PRESENCE_WRITE_BATCH", default_value_t = DEFAULT_WRITE_BATCH,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub write_batch: usize,

    /// Most heartbeat script calls waiting for Redis at once; while they wait, the next
    /// heartbeats gather into a batch.
    #[arg(long, env = "PRESENCE_WRITES_IN_FLIGHT", default_value_t = DEFAULT_WRITES_IN_FLIGHT,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub writes_in_flight: usize,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub ttl: TtlArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub web: crate::web::WebArgs,
}

impl ApiArgs {
    /// The ping interval told to clients.
    pub fn ping_interval(&self) -> u64 {
        self.ping_interval
            .unwrap_or((self.ttl.online_ttl / 10).max(1))
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.ttl.validate()?;
        let interval = self.ping_interval();
        anyhow::ensure!(
            interval >= 1 && interval < self.ttl.online_ttl.max(2),
            "--ping-interval ({interval}) must be at least 1 and shorter than --online-ttl"
        );
        anyhow::ensure!(self.max_batch >= 1, "--max-batch must be at least 1");
        self.limits.validate()
    }
}

/// What every request handler shares.
pub struct AppState {
    /// The Redis connection, one server or a cluster; cloning it shares its connections.
    pub redis: RedisConn,
    /// Writes pings and offline calls, coalescing concurrent ones.
    pub heartbeats: HeartbeatQueue,
    /// Reads presence.
    pub status: StatusReader,
    /// The database, for readiness checks.
    pub db: Arc<DbReader>,
    /// Seconds between pings, told to clients.
    pub ping_interval: u64,
    /// Most user ids per batch query.
    pub max_batch: usize,
    /// Checks bearer tokens.
    pub auth: Authenticator,
    /// How often one user may write.
    pub ping_limiter: PingLimiter,
    /// The in-flight cap and request timeout.
    pub request_guard: Arc<RequestGuard>,
}

impl AppState {
    /// Opens Redis (lazily) and the database (migrating it) as `args` say, and starts the
    /// task that writes heartbeats, so it must run inside a Tokio runtime.
    pub fn open(args: &ApiArgs) -> anyhow::Result<AppState> {
        args.validate()?;
        let auth = Authenticator::from_args(&args.auth)?;
        let store = &args.store;
        crate::db::open_and_migrate(&store.db, store.busy_timeout())?;
        let db = Arc::new(DbReader::new(&store.db, store.busy_timeout()));
        let redis = store.open_redis()?;
        let keys = store.keys();
        let writer = HeartbeatWriter::new(keys.clone(), args.ttl.online(), args.ttl.shadow());
        let limits = QueueLimits {
            max_batch: args.write_batch,
            in_flight: args.writes_in_flight,
        };
        let heartbeats = HeartbeatQueue::start(writer, redis.clone(), limits);
        Ok(AppState {
            redis,
            heartbeats,
            status: StatusReader::new(keys, Arc::clone(&db)),
            db,
            ping_interval: args.ping_interval(),
            max_batch: args.max_batch,
            auth,
            ping_limiter: PingLimiter::new(
                args.limits.ping_burst,
                Duration::from_millis(args.limits.ping_refill_ms),
                args.limits.ping_tracked_users,
            ),
            request_guard: Arc::new(RequestGuard::new(&args.limits)),
        })
    }
}

/// The application: every route, with its limits.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/users/{user_id}/ping", post(routes::ping))
        .route("/v1/users/{user_id}/offline", post(routes::offline))
        .route("/v1/users/{user_id}/presence", get(routes::presence))
        .route("/v1/presence/query", post(routes::query))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .merge(crate::metrics::api_routes())
        .merge(openapi::routes())
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn_with_state(
            Arc::clone(&state.request_guard),
            limits::guard_request,
        ))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}

/// The runtime the API runs on: `--worker-threads` threads, or one per core.
pub fn runtime(args: &ApiArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        builder.worker_threads(threads.into());
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// How long in-flight requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the API until SIGINT or SIGTERM.
pub async fn serve(args: ApiArgs) -> anyhow::Result<()> {
    let state = Arc::new(AppState::open(&args)?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        redis = %redact_url(&args.store.redis_url),
        db = %args.store.db.display(),
        key_prefix = %args.store.key_prefix,
        online_ttl = args.ttl.online_ttl,
        shadow_ttl = args.ttl.shadow_ttl,
        ping_interval = args.ping_interval(),
        max_batch = args.max_batch,
        write_batch = args.write_batch,
        writes_in_flight = args.writes_in_flight,
        cors_origins = ?args.web.cors_origins,
        shutdown_grace = args.web.shutdown_grace,
        "presence-api listening"
    );
    let limits = server::ConnectionLimits {
        header_read_timeout: args.limits.header_read_timeout(),
        max_connections: args.limits.max_connections,
        shutdown_grace: args.web.grace(),
    };
    let app = args.web.apply_cors(router(state))?;
    let shutdown = crate::schedule::shutdown_signal();
    server::serve_connections(listener, app, limits, shutdown).await;
    Ok(())
}
