//! Metrics in Prometheus's text format, for the API's `GET /metrics` and the scheduler's
//! `--metrics-listen`.
//!
//! Names follow Prometheus's conventions: counters end in `_total`, times are seconds.
//! HTTP requests are labelled by the route that matched (`/v1/users/{user_id}/ping`), never
//! by the raw path, so a million users make one series, not a million.
//!
//! The API counts failed Redis commands (`presence_redis_errors_total`), not reconnects:
//! the connection manager reconnects inside the Redis client without telling its caller,
//! and every reconnect starts with a command that failed, which this counter does see.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::snapshot::RunSummary;
use crate::time::wall_clock_ms;

/// HTTP requests answered, by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "presence_http_requests_total";
/// HTTP request latency in seconds, by `route` and `method`.
pub const HTTP_DURATION: &str = "presence_http_request_duration_seconds";
/// HTTP requests being handled right now.
pub const HTTP_IN_FLIGHT: &str = "presence_http_requests_in_flight";
/// Redis commands of the API that failed (refused, timed out, or cut by a reconnect).
pub const REDIS_ERRORS: &str = "presence_redis_errors_total";
/// Snapshot runs by `result` (`success` or `failure`).
pub const SNAPSHOT_RUNS: &str = "presence_snapshot_runs_total";
/// Snapshot run time in seconds.
pub const SNAPSHOT_DURATION: &str = "presence_snapshot_duration_seconds";
/// When the latest snapshot run ended, in seconds since the epoch.
pub const SNAPSHOT_LAST_RUN: &str = "presence_snapshot_last_run_timestamp_seconds";
/// When the latest successful snapshot run ended, in seconds since the epoch.
pub const SNAPSHOT_LAST_SUCCESS: &str = "presence_snapshot_last_success_timestamp_seconds";
/// Users online as the latest successful run saw them.
pub const SNAPSHOT_ONLINE: &str = "presence_snapshot_online_users";
/// Sessions that began, summed over runs.
pub const SNAPSHOT_CAME_ONLINE: &str = "presence_snapshot_came_online_total";
/// Sessions that ended, summed over runs.
pub const SNAPSHOT_WENT_OFFLINE: &str = "presence_snapshot_went_offline_total";
/// Shadow keys scanned, summed over runs.
pub const SNAPSHOT_KEYS_SCANNED: &str = "presence_snapshot_keys_scanned_total";

/// Request latency buckets, in seconds: a Redis round trip is about a millisecond, the
/// Redis response timeout two seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Snapshot run buckets, in seconds: milliseconds for a few users, minutes for millions.
const RUN_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How often histograms are drained into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed as the global one on first use.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let http = Matcher::Full(HTTP_DURATION.into());
        let runs = Matcher::Full(SNAPSHOT_DURATION.into());
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(http, LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(runs, RUN_BUCKETS))
            .expect("the bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; none counted");
        }
        describe();
        spawn_upkeep(handle.clone());
        handle
    })
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency."
    );
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being handled right now.");
    describe_counter!(REDIS_ERRORS, "Redis commands of the API that failed.");
    describe_counter!(SNAPSHOT_RUNS, "Snapshot runs, by result.");
    describe_histogram!(
        SNAPSHOT_DURATION,
        metrics::Unit::Seconds,
        "Snapshot run time."
    );
    describe_gauge!(
        SNAPSHOT_LAST_RUN,
        "When the latest snapshot run ended (unix seconds)."
    );
    describe_gauge!(
        SNAPSHOT_LAST_SUCCESS,
        "When the latest successful run ended (unix seconds)."
    );
    describe_gauge!(
        SNAPSHOT_ONLINE,
        "Users online as the latest successful run saw them."
    );
    describe_counter!(
        SNAPSHOT_CAME_ONLINE,
        "Sessions that began, summed over runs."
    );
    describe_counter!(
        SNAPSHOT_WENT_OFFLINE,
        "Sessions that ended, summed over runs."
    );
    describe_counter!(
        SNAPSHOT_KEYS_SCANNED,
        "Shadow keys scanned, summed over runs."
    );
}

/// Histograms grow until drained; a thread of its own drains them whatever the runtime does.
fn spawn_upkeep(handle: PrometheusHandle) {
    let upkeep = move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(upkeep)
    {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
}

/// `GET /metrics` for the API, its Redis error counter shown at zero from the start so
/// that alerts on its rate see a series before the first failure.
pub fn api_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let routes = routes();
    counter!(REDIS_ERRORS).absolute(0);
    routes
}

/// `GET /metrics` for any router; installs the recorder, so that what happens from here
/// on is counted.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    recorder();
    Router::new().route("/metrics", get(render))
}

/// `GET /metrics`: every metric of this process in Prometheus's text format.
#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Every metric of this process, in Prometheus's text format",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4"))
)]
pub async fn render() -> Response {
    let text = recorder().render();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Middleware: counts, times and logs (at debug) every request by its matched route.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(request.method());
    let started = Instant::now();

    let in_flight = InFlight::enter();
    let response = next.run(request).await;
    drop(in_flight);

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let (requests, duration) = http_series().get(route, method, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    tracing::debug!(method, %route, status, elapsed_ms = elapsed.as_millis() as u64, "request");
    response
}

/// The request counter and latency histogram of each route, method and status, looked up
/// in the recorder once rather than on every request (a lookup hashes the labels, which
/// costs more than the count itself).
#[derive(Default)]
struct HttpSeries {
    by_route: RwLock<HashMap<Box<str>, Vec<Series>>>,
}

/// One route's handles for one method and status.
struct Series {
    method: &'static str,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

fn http_series() -> &'static HttpSeries {
    static SERIES: OnceLock<HttpSeries> = OnceLock::new();
    SERIES.get_or_init(HttpSeries::default)
}

impl HttpSeries {
    fn get(&self, route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
        let pick = |all: &Vec<Series>| {
            let s = all
                .iter()
                .find(|s| s.method == method && s.status == status)?;
            Some((s.requests.clone(), s.duration.clone()))
        };
        let known = self.by_route.read().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = known.get(route).and_then(pick) {
            return found;
        }
        drop(known);
        let mut known = self.by_route.write().unwrap_or_else(|e| e.into_inner());
        let all = known.entry(route.into()).or_default();
        if let Some(found) = pick(all) {
            return found;
        }
        let owned = route.to_owned();
        let series = Series {
            method,
            status,
            requests: counter!(HTTP_REQUESTS, "route" => owned.clone(), "method" => method,
                "status" => status.to_string()),
            duration: histogram!(HTTP_DURATION, "route" => owned, "method" => method),
        };
        let found = (series.requests.clone(), series.duration.clone());
        all.push(series);
        found
    }
}

/// The method as a label: a client may send any token as a method, and each would
/// otherwise become series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Counts a request in flight until dropped, so a cancelled request is not counted forever.
struct InFlight(&'static Gauge);

impl InFlight {
    fn enter() -> InFlight {
        static GAUGE: OnceLock<Gauge> = OnceLock::new();
        let gauge = GAUGE.get_or_init(|| gauge!(HTTP_IN_FLIGHT));
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Counts one failed Redis command of the API.
pub fn redis_error() {
    counter!(REDIS_ERRORS).increment(1);
}

/// Records one snapshot run of the scheduler: `summary` is `None` when it failed.
pub fn record_run(summary: Option<&RunSummary>, elapsed: Duration) {
    let now = wall_clock_ms() as f64 / 1000.0;
    let result = if summary.is_some() {
        "success"
    } else {
        "failure"
    };
    counter!(SNAPSHOT_RUNS, "result" => result).increment(1);
    histogram!(SNAPSHOT_DURATION).record(elapsed.as_secs_f64());
    gauge!(SNAPSHOT_LAST_RUN).set(now);
    let Some(s) = summary else { return };
    gauge!(SNAPSHOT_LAST_SUCCESS).set(now);
    gauge!(SNAPSHOT_ONLINE).set(s.online as f64);
    counter!(SNAPSHOT_CAME_ONLINE).increment(s.came_online);
    counter!(SNAPSHOT_WENT_OFFLINE).increment(s.went_offline);
    counter!(SNAPSHOT_KEYS_SCANNED).increment(s.keys_scanned);
}

/// Serves `GET /metrics` on `addr` in the background; returns the address bound.
pub async fn serve_listener(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = routes::<()>();
    // Both results shown at zero from the start, for alerts that divide one by the other.
    counter!(SNAPSHOT_RUNS, "result" => "success").absolute(0);
    counter!(SNAPSHOT_RUNS, "result" => "failure").absolute(0);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(metrics = %bound, "serving metrics");
    Ok(bound)
}
