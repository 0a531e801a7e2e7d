//! Operating the real binaries: metrics, logs, shutdown and the command line.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{LoggedApi, RedisServer, TestApi, TestDb, free_port, short_ttls, snapshot_proc};

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

async fn get_text(url: String) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// A request whose body never finishes: it stays in flight until the server gives up.
fn stalled_query(base: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = "POST /v1/presence/query HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 21\r\n\r\n{\"user_ids\": [";
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

/// Waits until the API counts `n` requests in flight (the `/metrics` request included).
async fn wait_in_flight(base: &str, n: f64) {
    let seen = support::eventually(Duration::from_secs(5), || async {
        let text = get_text(format!("{base}/metrics")).await;
        sample(&text, "presence_http_requests_in_flight", &[]) == Some(n)
    })
    .await;
    assert!(seen, "never saw {n} requests in flight");
}

/// `/metrics` counts requests by the route that matched, never by the raw path, so user
/// ids do not become series.
#[tokio::test]
async fn api_metrics_count_requests_by_matched_route() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = LoggedApi::start(&redis.url(), &db, &[]);
    let http = reqwest::Client::new();

    for user in ["ann", "bob", "a%20b"] {
        http.post(format!("{}/v1/users/{user}/ping", api.base))
            .send()
            .await
            .unwrap();
    }
    let text = get_text(format!("{}/metrics", api.base)).await;

    let ping = [("route", "/v1/users/{user_id}/ping"), ("method", "POST")];
    let total = |status| {
        let labels = [ping[0], ping[1], ("status", status)];
        sample(&text, "presence_http_requests_total", &labels)
    };
    let timed = |suffix: &str| {
        let name = format!("presence_http_request_duration_seconds_{suffix}");
        sample(&text, &name, &ping)
    };
    assert_eq!(total("200"), Some(2.0), "{text}");
    assert_eq!(total("400"), Some(1.0));
    assert_eq!(timed("count"), Some(3.0));
    assert!(timed("bucket").is_some());
    let in_flight = sample(&text, "presence_http_requests_in_flight", &[]);
    assert_eq!(in_flight, Some(1.0), "the /metrics request itself");
    assert!(!text.contains("ann") && !text.contains("bob"));
}

/// A method the API does not know is labelled `other`: clients cannot make series by
/// inventing methods.
#[tokio::test]
async fn invented_methods_share_one_label() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = LoggedApi::start(&redis.url(), &db, &[]);
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();

    let http = reqwest::Client::new();
    http.request(brew, format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    let text = get_text(format!("{}/metrics", api.base)).await;

    let labels = [("method", "other"), ("status", "405")];
    assert_eq!(
        sample(&text, "presence_http_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("BREW"));
}

/// A failed Redis command is counted, and the request it failed answers 503.
#[tokio::test]
async fn api_metrics_count_redis_errors() {
    let db = TestDb::new();
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let api = LoggedApi::start(&dead_redis, &db, &[]);

    let status = reqwest::Client::new()
        .post(format!("{}/v1/users/ann/ping", api.base))
        .send()
        .await
        .unwrap()
        .status();
    let text = get_text(format!("{}/metrics", api.base)).await;

    assert_eq!(status, 503);
    assert_eq!(sample(&text, "presence_redis_errors_total", &[]), Some(1.0));
    let failed = [("route", "/v1/users/{user_id}/ping"), ("status", "503")];
    assert_eq!(
        sample(&text, "presence_http_requests_total", &failed),
        Some(1.0)
    );
}

/// With `--log-format json` every line on standard error is a JSON object, and the
/// start line names the configuration with the Redis password masked.
#[tokio::test]
async fn json_logs_parse_and_hide_the_redis_password() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let url = redis.url().replace("redis://", "redis://:hunter2@");

    let mut api = LoggedApi::start(&url, &db, &[]);
    let started = api.proc.wait_for_log("presence-api listening");

    let masked = redis.url().replace("redis://", "redis://:***@");
    assert_eq!(started["redis"], masked.as_str());
    assert_eq!(started["online_ttl"], 300);
    assert_eq!(started["max_batch"], 1000);
    assert!(api.proc.logs().iter().all(|l| l["level"].is_string()));
    assert!(!api.proc.log_text().contains("hunter2"));
}

/// At debug level each request is one log line with its matched route and status.
#[tokio::test]
async fn requests_are_logged_at_debug_level() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let env = [("RUST_LOG", "presence=debug")];
    let mut api = LoggedApi::start_with_env(&redis.url(), &db, &[], &env);

    reqwest::Client::new()
        .post(format!("{}/v1/users/ann/ping", api.base))
        .send()
        .await
        .unwrap();
    let line = api.proc.wait_for_log("request");

    assert_eq!(line["route"], "/v1/users/{user_id}/ping");
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "POST");
}

/// `schedule --metrics-listen` serves the runs' numbers while it runs.
#[tokio::test]
async fn the_scheduler_serves_its_metrics() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    api.ping("ann").await;

    let args = [
        "schedule",
        "--cron",
        "* * * * * *",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let mut job = snapshot_proc(&redis, &db, &args);
    let addr = job.wait_for_log("serving metrics")["metrics"].clone();
    job.wait_for_log("snapshot run");
    let text = get_text(format!("http://{}/metrics", addr.as_str().unwrap())).await;

    let runs = |result| sample(&text, "presence_snapshot_runs_total", &[("result", result)]);
    assert!(runs("success") >= Some(1.0), "{text}");
    assert_eq!(runs("failure"), Some(0.0));
    assert_eq!(
        sample(&text, "presence_snapshot_online_users", &[]),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "presence_snapshot_last_success_timestamp_seconds",
            &[]
        ) > Some(1e9)
    );
    assert!(sample(&text, "presence_snapshot_duration_seconds_count", &[]) >= Some(1.0));
}

/// `run --metrics-file` leaves the run's numbers for node_exporter, and nothing else in
/// the folder.
#[tokio::test]
async fn a_run_writes_its_textfile() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    api.ping("ann").await;
    api.ping("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presence.prom");

    let mut job = snapshot_proc(
        &redis,
        &db,
        &["run", "--metrics-file", file.to_str().unwrap()],
    );
    let status = job.wait_exit(Duration::from_secs(30));

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(status.success(), "{}", job.log_text());
    assert_eq!(
        sample(&text, "presence_snapshot_last_run_success", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "presence_snapshot_last_run_online_users", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "presence_snapshot_last_run_came_online_users", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "presence_snapshot_last_run_went_offline_users", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "presence_snapshot_last_run_keys_scanned", &[]),
        Some(2.0)
    );
    assert!(sample(&text, "presence_snapshot_last_run_timestamp_seconds", &[]) > Some(1e9));
    assert!(sample(&text, "presence_snapshot_last_run_duration_seconds", &[]).is_some());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A run that fails still writes its textfile, saying it failed.
#[test]
fn a_failed_run_writes_its_textfile() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presence.prom");
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let path = db.path().display().to_string();
    let args = ["--redis-url", &dead, "--db", &path, "run", "--metrics-file"];
    let mut args = args.to_vec();
    args.push(file.to_str().unwrap());
    drop(redis);

    let mut job = support::Proc::spawn(env!("CARGO_BIN_EXE_presence-snapshot"), &args, &[]);
    let status = job.wait_exit(Duration::from_secs(30));

    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(status.code(), Some(3), "{}", job.log_text());
    assert_eq!(
        sample(&text, "presence_snapshot_last_run_success", &[]),
        Some(0.0)
    );
    assert!(sample(&text, "presence_snapshot_last_run_timestamp_seconds", &[]) > Some(1e9));
    assert_eq!(
        sample(&text, "presence_snapshot_last_run_online_users", &[]),
        None
    );
}

/// SIGTERM lets a request in flight finish and be answered before the API exits.
#[tokio::test]
async fn sigterm_drains_requests_in_flight() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut api = LoggedApi::start(&redis.url(), &db, &[]);
    let mut stalled = stalled_query(&api.base);
    wait_in_flight(&api.base, 2.0).await;

    api.proc.terminate();
    api.proc
        .wait_for_log("stopped accepting; letting open connections finish");
    stalled.write_all(b"\"ann\"]}").unwrap();
    let mut answer = String::new();
    stalled.read_to_string(&mut answer).unwrap();
    let status = api.proc.wait_exit(Duration::from_secs(10));

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""user_id":"ann""#), "{answer}");
    assert!(status.success(), "{}", api.proc.log_text());
}

/// A request that never finishes cannot keep the API from exiting after SIGTERM: it
/// exits once the shutdown grace has passed.
#[tokio::test]
async fn sigterm_gives_up_on_stuck_requests_after_the_grace() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut api = LoggedApi::start(&redis.url(), &db, &["--shutdown-grace", "1"]);
    let _stalled = stalled_query(&api.base);
    wait_in_flight(&api.base, 2.0).await;

    api.proc.terminate();
    let status = api.proc.wait_exit(Duration::from_secs(20));

    assert!(status.success(), "{}", api.proc.log_text());
    let gave_up = api
        .proc
        .logged("connections still open after the grace period; closing them");
    assert!(gave_up.is_some(), "{}", api.proc.log_text());
}

/// SIGTERM during a snapshot run lets the run commit before the scheduler exits.
#[test]
fn sigterm_lets_the_scheduler_finish_its_run() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let mut job = snapshot_proc(&redis, &db, &["schedule", "--cron", "* * * * * *"]);
    job.wait_for_log("snapshot run");
    // Redis holds every command for a while, so the next run holds its lock, waiting on SCAN.
    redis::cmd("CLIENT")
        .arg(&["PAUSE", "1500", "ALL"])
        .query::<()>(&mut redis.con())
        .unwrap();
    wait_for_run_in_progress(&db);

    job.terminate();
    let status = job.wait_exit(Duration::from_secs(20));

    let logs = job.logs();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    let stopping = logs
        .iter()
        .position(|l| message(l).starts_with("shutting down"))
        .unwrap();
    let runs_logged = logs.iter().filter(|l| message(l) == "snapshot run").count();
    assert!(status.success(), "{}", job.log_text());
    assert!(
        logs[stopping..]
            .iter()
            .any(|l| message(l) == "snapshot run"),
        "{}",
        job.log_text()
    );
    assert_eq!(count_runs(&db), runs_logged as i64);
}

fn wait_for_run_in_progress(db: &TestDb) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if presence::lock::RunLock::try_acquire(&db.path()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no run took the lock");
}

fn count_runs(db: &TestDb) -> i64 {
    db.conn()
        .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .unwrap()
}

/// `history` draws the online count of the recent runs as a sparkline, oldest first.
#[tokio::test]
async fn history_draws_the_online_count_over_time() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let opts = support::snapshot_options(&db);
    api.ping("ann").await;
    support::snapshot(&redis, &opts).await.unwrap();
    api.ping("bob").await;
    support::snapshot(&redis, &opts).await.unwrap();

    let mut job = snapshot_proc(&redis, &db, &["history"]);
    let status = job.wait_exit(Duration::from_secs(30));
    let out = job.stdout();

    assert!(status.success(), "{}", job.log_text());
    assert!(
        out.starts_with("online ▁█  min 1 max 2, oldest to newest\n"),
        "{out}"
    );
}

/// `completions bash` prints a script that knows every command and flag.
#[test]
fn completions_know_every_command() {
    let (redis, db) = (RedisServer::start(), TestDb::new());

    let mut job = snapshot_proc(&redis, &db, &["completions", "bash"]);
    let status = job.wait_exit(Duration::from_secs(30));
    let script = job.stdout();

    assert!(status.success(), "{}", job.log_text());
    for word in [
        "presence-snapshot",
        "history",
        "backup",
        "--metrics-file",
        "--log-format",
    ] {
        assert!(script.contains(word), "the script lacks {word}");
    }
}

/// Every command, flag and argument of both binaries says what it is for in `--help`.
#[test]
fn every_option_has_help() {
    use clap::{Args, CommandFactory};
    let api = presence::api::ApiArgs::augment_args(clap::Command::new("presence-api"));
    let api = presence::logging::LogArgs::augment_args(api);
    let snapshot = presence::cli::SnapshotCli::command();

    let mut missing = Vec::new();
    for command in [&api, &snapshot] {
        undocumented(command, &mut missing);
    }

    assert!(missing.is_empty(), "no help text: {missing:?}");
}

fn undocumented(command: &clap::Command, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str()) {
            missing.push(format!("{} {}", command.get_name(), arg.get_id()));
        }
    }
    for sub in command.get_subcommands() {
        if sub.get_about().is_none() {
            missing.push(sub.get_name().to_owned());
        }
        undocumented(sub, missing);
    }
}

/// `backup PATH` writes a copy holding exactly what the database holds.
#[tokio::test]
async fn backup_copies_the_database() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    api.ping("ann").await;
    api.offline("bob").await;
    support::snapshot(&redis, &support::snapshot_options(&db))
        .await
        .unwrap();
    let copy = TestDb::new();

    let target = copy.path().display().to_string();
    let mut job = snapshot_proc(&redis, &db, &["backup", &target]);
    let status = job.wait_exit(Duration::from_secs(30));

    assert!(status.success(), "{}", job.log_text());
    assert_eq!(copy.dump(), db.dump());
    assert!(
        db.dump().contains("last_seen: Text(\"bob\")"),
        "{}",
        db.dump()
    );
}

/// With `--cors-origin`, pages of that origin may read the API's answers, and pages of
/// any other origin may not.
#[tokio::test]
async fn cors_allows_only_the_named_origins() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = LoggedApi::start(
        &redis.url(),
        &db,
        &["--cors-origin", "https://a.test,https://b.test"],
    );
    let http = reqwest::Client::new();
    let allowed = |origin: &'static str| {
        let request = http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/presence/query", api.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type");
        async move {
            let response = request.send().await.unwrap();
            response
                .headers()
                .get("access-control-allow-origin")
                .cloned()
        }
    };

    let (a, b, other) = (
        allowed("https://b.test").await,
        allowed("https://a.test").await,
        allowed("https://evil.test").await,
    );

    assert_eq!(a.unwrap(), "https://b.test");
    assert_eq!(b.unwrap(), "https://a.test");
    assert_eq!(other, None);
}

/// A run against a Redis that holds no presence keys at all commits an empty run; it used
/// to send Redis an empty pipeline and fail.
#[tokio::test]
async fn a_run_with_nobody_in_redis_succeeds() {
    let (redis, db) = (RedisServer::start(), TestDb::new());

    let summary = support::snapshot(&redis, &support::snapshot_options(&db)).await;

    assert_eq!(summary.unwrap().online, 0);
    assert_eq!(count_runs(&db), 1);
}

/// A run that finds another run holding the lock leaves the textfile alone: the run that
/// holds it will write it, and a failure written now would be a false alarm.
#[test]
fn a_run_that_finds_the_lock_taken_leaves_the_textfile_alone() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presence.prom");
    let _held = presence::lock::RunLock::try_acquire(&db.path()).unwrap();

    let mut job = snapshot_proc(
        &redis,
        &db,
        &["run", "--metrics-file", file.to_str().unwrap()],
    );
    let status = job.wait_exit(Duration::from_secs(30));

    assert_eq!(status.code(), Some(5), "{}", job.log_text());
    assert!(!file.exists());
}
