//! Random requests over the whole HTTP surface: never a 5xx, never a dropped connection,
//! always the JSON error body on a 4xx.

mod support;

use presence::api::auth::AuthArgs;
use support::{
    RedisServer, Rng, TestApi, TestDb, admin_token, api_args, auth_defaults, epoch_secs,
    hs256_token, secret_file, short_ttls, user_token,
};

/// Requests per run; `PRESENCE_TEST_SEED` replays a failing run.
const REQUESTS: usize = 1500;

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"];

const IDS: &[&str] = &[
    "ann",
    "bob",
    "a.b-c_d@e",
    "",
    "..",
    "%2e%2e",
    "a%20b",
    "%00",
    "%FF%FE",
    "%7Bann%7D",
    "ann%2Fping",
    "%E2%98%83",
    "*",
    "?x=1",
    "a:b",
    "ann;x",
    "%25",
];

fn random_path(rng: &mut Rng) -> String {
    let id = match rng.below(4) {
        0 => "x".repeat(rng.below(300) as usize),
        1 => percent_bytes(rng),
        _ => rng.pick(IDS).to_string(),
    };
    let paths = [
        format!("/v1/users/{id}/ping"),
        format!("/v1/users/{id}/offline"),
        format!("/v1/users/{id}/presence"),
        format!("/v1/users/{id}"),
        format!("/v1/users/{id}/ping/{id}"),
        "/v1/presence/query".to_owned(),
        "/healthz".to_owned(),
        "/readyz".to_owned(),
        format!("/{id}"),
        "/v1//users//ping".to_owned(),
    ];
    rng.pick(&paths).clone()
}

fn percent_bytes(rng: &mut Rng) -> String {
    let len = rng.below(12);
    (0..len)
        .map(|_| format!("%{:02X}", rng.below(256)))
        .collect()
}

fn random_auth(rng: &mut Rng) -> Option<String> {
    let token = match rng.below(9) {
        0 => return None,
        1 => user_token("ann"),
        2 => admin_token(),
        3 => hs256_token(&serde_json::json!({"sub": "bob", "exp": epoch_secs(-600)})),
        4 => hs256_token(&serde_json::json!({"sub": "a b", "exp": epoch_secs(600)})),
        5 => hs256_token(&serde_json::json!({"sub": 7, "exp": "soon", "scope": {"x": 1}})),
        6 => "a.b.c".to_owned(),
        7 => percent_bytes(rng),
        _ => user_token(&"z".repeat(rng.below(200) as usize)),
    };
    let scheme = *rng.pick(&["Bearer", "bearer", "Basic", "Token", ""]);
    Some(format!("{scheme} {token}"))
}

fn random_body(rng: &mut Rng) -> Vec<u8> {
    let ids: Vec<String> = (0..rng.below(1200)).map(|i| format!("u{i}")).collect();
    match rng.below(8) {
        0 => Vec::new(),
        1 => serde_json::json!({"user_ids": ids})
            .to_string()
            .into_bytes(),
        2 => serde_json::json!({"user_ids": ["ann", 5, null, {"a": 1}]})
            .to_string()
            .into_bytes(),
        3 => "[".repeat(rng.below(5000) as usize).into_bytes(),
        4 => (0..rng.below(2000)).map(|_| rng.below(256) as u8).collect(),
        5 => format!(
            "{{\"user_ids\": [\"{}\"]}}",
            "a".repeat(rng.below(80_000) as usize)
        )
        .into_bytes(),
        6 => b"{\"user_ids\": [\"ann\"], \"user_ids\": []}".to_vec(),
        _ => serde_json::json!({"user_ids": ["ann", "bob"]})
            .to_string()
            .into_bytes(),
    }
}

fn random_request(rng: &mut Rng, api: &TestApi) -> (String, reqwest::RequestBuilder) {
    let method = *rng.pick(METHODS);
    let path = random_path(rng);
    let mut request = api
        .http
        .request(method.parse().unwrap(), format!("{}{path}", api.base));
    if let Some(auth) = random_auth(rng) {
        request = request.header("authorization", auth);
    }
    let content_type = *rng.pick(&[
        "application/json",
        "text/plain",
        "application/json; x=y",
        "",
    ]);
    if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    if rng.chance(0.2) {
        request = request.header("x-random", percent_bytes(rng));
    }
    (format!("{method} {path}"), request.body(random_body(rng)))
}

/// Random methods, paths, user ids, tokens, headers and bodies against the API with auth
/// on: every answer is below 500, and every 4xx carries `{"error", "message"}`.
#[tokio::test]
async fn random_requests_get_clean_answers() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.auth = AuthArgs {
        jwt_secret_file: Some(secret_file(dir.path())),
        ..auth_defaults()
    };
    let api = TestApi::serve(args).await;
    let mut rng = Rng::from_env_or(42);

    let mut answers = Vec::new();
    for _ in 0..REQUESTS {
        let (what, request) = random_request(&mut rng, &api);
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        answers.push((what, status, body));
    }
    let still_up = api
        .send(api.http.get(format!("{}/healthz", api.base)))
        .await
        .0;

    for (what, status, body) in &answers {
        assert!(*status < 500, "{what}: {status} {body}");
        let head = what.starts_with("HEAD ");
        if (400..500).contains(status) && !head {
            assert!(body["error"].is_string(), "{what}: {status} {body}");
            assert!(body["message"].is_string(), "{what}: {status} {body}");
        }
    }
    let statuses: std::collections::BTreeSet<u16> = answers.iter().map(|a| a.1).collect();
    eprintln!("statuses seen: {statuses:?}");
    assert!(
        statuses.contains(&200) && statuses.contains(&401),
        "{statuses:?}"
    );
    assert_eq!(still_up, 200);
}
