//! The browser client in `examples/web/` against the real API, in headless Chromium.
//!
//! Chromium is driven over its DevTools protocol with two browser-level commands, open a
//! tab and close it, so the test needs no driver binary. `scripts/need-chromium` installs
//! the browser; without it this test fails and says so.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{LoggedApi, RedisServer, TestDb, eventually, ms};
use tokio_tungstenite::tungstenite::Message;

/// Headless Chromium with a profile of its own, killed on drop.
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    devtools: String,
}

impl Chromium {
    fn launch() -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
            ])
            .args([
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium must be installed (scripts/need-chromium)");
        let devtools = devtools_url(profile.path());
        Chromium {
            child,
            _profile: profile,
            devtools,
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium writes its DevTools port and path to the profile once it listens.
fn devtools_url(profile: &Path) -> String {
    let file: PathBuf = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let [port, path] = text.lines().collect::<Vec<_>>()[..] {
            return format!("ws://127.0.0.1:{port}{path}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("chromium never opened its DevTools port");
}

/// A DevTools connection to the browser.
struct DevTools {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl DevTools {
    async fn connect(url: &str) -> DevTools {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        DevTools { ws, next_id: 1 }
    }

    /// Sends one command to the browser and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_in(None, method, params).await
    }

    /// Sends one command, to a page's session if given, and returns its result, skipping
    /// events.
    async fn call_in(&mut self, session: Option<&Value>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.clone();
        }
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        while let Some(message) = self.ws.next().await {
            let Ok(Message::Text(text)) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method} failed: {answer}");
                return answer["result"].clone();
            }
        }
        panic!("DevTools closed during {method}");
    }
}

/// Serves `examples/web/` on a port of its own; returns the origin.
async fn serve_example() -> String {
    let page = include_str!("../examples/web/index.html");
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

async fn presence_of(api: &str, user: &str) -> Value {
    let url = format!("{api}/v1/users/{user}/presence");
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The text the page shows, read in the page itself.
async fn page_state(devtools: &mut DevTools, session: &Value) -> String {
    let script = json!({"expression": "document.getElementById('state').textContent",
        "returnByValue": true});
    let result = devtools
        .call_in(Some(session), "Runtime.evaluate", script)
        .await;
    result["result"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn redis_now_ms(redis: &RedisServer) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut redis.con()).unwrap();
    secs * 1000 + micros / 1000
}

/// The page keeps its user online while open; closing it takes the user offline at
/// once, last seen at the moment it closed.
#[tokio::test(flavor = "multi_thread")]
async fn the_web_client_goes_online_and_offline_with_its_page() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let origin = serve_example().await;
    let api = LoggedApi::start(&redis.url(), &db, &["--cors-origin", &origin]);
    let browser = Chromium::launch();
    let mut devtools = DevTools::connect(&browser.devtools).await;
    let page = format!("{origin}/?api={}&user=ann", api.base);

    let tab = devtools
        .call("Target.createTarget", json!({"url": page}))
        .await;
    let attach = json!({"targetId": tab["targetId"], "flatten": true});
    let session = devtools.call("Target.attachToTarget", attach).await["sessionId"].clone();
    let mut shown = String::new();
    for _ in 0..200 {
        shown = page_state(&mut devtools, &session).await;
        if shown.starts_with("online") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let online = presence_of(&api.base, "ann").await["online"] == true;
    let before_close = redis_now_ms(&redis);
    devtools
        .call("Target.closeTarget", json!({"targetId": tab["targetId"]}))
        .await;
    let offline = eventually(Duration::from_secs(20), || async {
        presence_of(&api.base, "ann").await["online"] == false
    })
    .await;
    let after_offline = redis_now_ms(&redis);

    let read = presence_of(&api.base, "ann").await;
    assert!(
        shown.starts_with("online (last seen"),
        "the page shows {shown:?}"
    );
    assert!(online, "the page never pinged:\n{}", api.proc.log_text());
    assert!(offline, "closing the page never sent the offline call");
    let last_seen = ms(&read["last_seen"]);
    assert!(
        before_close <= last_seen && last_seen <= after_offline,
        "{read}"
    );
}
