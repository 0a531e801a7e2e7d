//! Binaries of this crate as child processes whose JSON logs the test reads.

use std::io::BufRead;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{RedisServer, TestDb};

/// A binary of this crate running as a child process with JSON logs, every line of its
/// standard error kept for the test to read; killed on drop.
pub struct Proc {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `bin` (a path from `env!("CARGO_BIN_EXE_…")`) with `args` and JSON logs at
    /// `RUST_LOG` level `info` unless `env` says otherwise.
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .arg("--log-format=json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// Once the process has exited: waits until every line it wrote has been read.
    fn drain_stderr(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    /// Every line written to standard error so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The log lines so far, parsed; panics on a line that is not JSON.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        let parse = |line: &String| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        };
        self.stderr_lines().iter().map(parse).collect()
    }

    /// Waits up to ten seconds for a log line whose message is `message` and returns its
    /// fields; panics with the whole log if none comes.
    pub fn wait_for_log(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() {
                self.drain_stderr();
            }
            if let Some(fields) = self.logged(message) {
                return fields;
            }
            if let Some(status) = exited {
                panic!(
                    "exited ({status}) before logging {message:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never logged {message:?}:\n{}", self.log_text())
    }

    /// The fields of the first log line whose message is `message`.
    pub fn logged(&self, message: &str) -> Option<serde_json::Value> {
        let mut lines = self.logs().into_iter();
        let line = lines.find(|l| l["fields"]["message"] == message)?;
        Some(line["fields"].clone())
    }

    /// Standard error as one string, for failure messages.
    pub fn log_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Sends SIGTERM, as systemd does to stop a service.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; panics with its log if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("still running after {limit:?}:\n{}", self.log_text())
    }

    /// Standard output, once the process has exited.
    pub fn stdout(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut pipe, &mut out).unwrap();
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `presence-api` as a process of its own on a free port, against `redis` and `db`.
pub struct LoggedApi {
    /// The process.
    pub proc: Proc,
    /// The base URL, `http://127.0.0.1:PORT`.
    pub base: String,
}

impl LoggedApi {
    /// Starts the real binary with `extra` flags and waits until it listens.
    pub fn start(redis_url: &str, db: &TestDb, extra: &[&str]) -> LoggedApi {
        LoggedApi::start_with_env(redis_url, db, extra, &[])
    }

    /// [`LoggedApi::start`] with environment variables set, `RUST_LOG` say.
    pub fn start_with_env(
        redis_url: &str,
        db: &TestDb,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> LoggedApi {
        let db_path = db.path().display().to_string();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
            "--redis-url",
            redis_url,
        ];
        args.extend(["--db", &db_path]);
        args.extend(extra);
        let mut proc = Proc::spawn(env!("CARGO_BIN_EXE_presence-api"), &args, env);
        let listening = proc.wait_for_log("presence-api listening");
        let addr = listening["listen"].as_str().unwrap().to_owned();
        LoggedApi {
            proc,
            base: format!("http://{addr}"),
        }
    }
}

/// `presence-snapshot` with the store flags for `redis` and `db`, then `args`.
pub fn snapshot_proc(redis: &RedisServer, db: &TestDb, args: &[&str]) -> Proc {
    let (url, path) = (redis.url(), db.path().display().to_string());
    let mut all = vec!["--redis-url", url.as_str(), "--db", path.as_str()];
    all.extend(args);
    Proc::spawn(env!("CARGO_BIN_EXE_presence-snapshot"), &all, &[])
}
