//! Who may do what: bearer tokens on every route that touches a user.

mod support;

use std::path::PathBuf;

use presence::api::auth::{AuthArgs, KeyAlgorithm};
use reqwest::RequestBuilder;
use serde_json::json;
use support::{
    ApiProcess, RedisServer, TestApi, TestDb, admin_token, api_args, auth_defaults, epoch_secs,
    hs256_token, secret_file, short_ttls, store_flags, user_token,
};

/// The API with HS256 tokens on, against a fresh Redis and database.
async fn api_with_secret(redis: &RedisServer, db: &TestDb, dir: &std::path::Path) -> TestApi {
    let mut args = api_args(redis, db, short_ttls(300, 1200));
    args.auth = AuthArgs {
        jwt_secret_file: Some(secret_file(dir)),
        ..auth_defaults()
    };
    TestApi::serve(args).await
}

fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn signed_with(name: &str, alg: jsonwebtoken::Algorithm, claims: serde_json::Value) -> String {
    let pem = std::fs::read(key_file(name)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key.unwrap()).unwrap()
}

/// Every protected route, for `user`.
fn protected(api: &TestApi, user: &str) -> Vec<RequestBuilder> {
    let base = &api.base;
    vec![
        api.http.post(format!("{base}/v1/users/{user}/ping")),
        api.http.post(format!("{base}/v1/users/{user}/offline")),
        api.http.get(format!("{base}/v1/users/{user}/presence")),
        api.http
            .post(format!("{base}/v1/presence/query"))
            .json(&json!({"user_ids": [user]})),
    ]
}

/// The two write routes, for `user`.
fn writes(api: &TestApi, user: &str) -> Vec<RequestBuilder> {
    protected(api, user).into_iter().take(2).collect()
}

/// Sends `request`: status, the `WWW-Authenticate` header and the JSON body.
async fn send(request: RequestBuilder) -> (u16, Option<String>, serde_json::Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.json().await.unwrap_or_default())
}

/// Missing, malformed, expired, wrongly signed, unsigned and subject-less tokens all get
/// the very same 401 with `WWW-Authenticate: Bearer`, on every protected route.
#[tokio::test]
async fn every_bad_token_gets_the_same_401() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let api = api_with_secret(&redis, &db, dir.path()).await;
    let wrong_key =
        jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more!!").unwrap();
    let claims = json!({"sub": "ann", "exp": epoch_secs(3600)});
    let forged = jsonwebtoken::encode(&Default::default(), &claims, &wrong_key).unwrap();
    let good = user_token("ann");
    let (head, rest) = good.split_once('.').unwrap();
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        rest.split('.').next().unwrap()
    );
    let bad_headers: Vec<Option<String>> = vec![
        None,
        Some("Bearer".into()),
        Some("Basic YW5uOnB3".into()),
        Some("Bearer not-a-jwt".into()),
        Some(format!("Bearer {head}.{rest}x")),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {unsigned}")),
        Some(format!(
            "Bearer {}",
            hs256_token(&json!({"sub": "ann", "exp": epoch_secs(-3600)}))
        )),
        Some(format!("Bearer {}", hs256_token(&json!({"sub": "ann"})))),
        Some(format!(
            "Bearer {}",
            hs256_token(&json!({"exp": epoch_secs(3600)}))
        )),
    ];

    let mut answers = Vec::new();
    for header in &bad_headers {
        for request in protected(&api, "ann") {
            let request = match header {
                Some(h) => request.header("authorization", h),
                None => request,
            };
            answers.push(send(request).await);
        }
    }

    let expected = (
        401,
        Some("Bearer".to_owned()),
        json!({"error": "unauthorized", "message": "a valid bearer token is required"}),
    );
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer, expected, "case {}", i / 4);
    }
}

/// A user pings and goes offline as themself, reads anyone, and may not write for others.
#[tokio::test]
async fn a_user_writes_only_as_themself() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let api = api_with_secret(&redis, &db, dir.path()).await;
    let ann = user_token("ann");

    let own: Vec<u16> = statuses(protected(&api, "ann"), &ann).await;
    let others_read = statuses(protected(&api, "bob").split_off(2), &ann).await;
    let others_write = statuses(writes(&api, "bob"), &ann).await;
    let (_, _, forbidden) = send(
        api.http
            .post(format!("{}/v1/users/bob/ping", api.base))
            .bearer_auth(&ann),
    )
    .await;

    assert_eq!(own, [200, 200, 200, 200]);
    assert_eq!(others_read, [200, 200]);
    assert_eq!(others_write, [403, 403]);
    assert_eq!(forbidden["error"], "forbidden");
}

async fn statuses(requests: Vec<RequestBuilder>, token: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(send(request.bearer_auth(token)).await.0);
    }
    statuses
}

/// A token whose scope holds the admin value (in a string or an array) acts for anyone;
/// a scope without it does not.
#[tokio::test]
async fn an_admin_token_acts_for_anyone() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let api = api_with_secret(&redis, &db, dir.path()).await;
    let as_array = hs256_token(&json!({
        "sub": "svc", "scope": ["presence:admin"], "exp": epoch_secs(3600)
    }));
    let lookalike = hs256_token(&json!({
        "sub": "svc", "scope": "presence:administrator read", "exp": epoch_secs(3600)
    }));

    let admin = statuses(protected(&api, "bob"), &admin_token()).await;
    let array = statuses(protected(&api, "cat"), &as_array).await;
    let not_admin = statuses(writes(&api, "dan"), &lookalike).await;

    assert_eq!(admin, [200, 200, 200, 200]);
    assert_eq!(array, [200, 200, 200, 200]);
    assert_eq!(not_admin, [403, 403]);
}

/// RS256 and ES256 tokens verify against a public key; an HS256 token made with the public
/// key as its secret (the algorithm-confusion attack) does not.
#[tokio::test]
async fn public_key_tokens_verify() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let claims = json!({"sub": "ann", "exp": epoch_secs(3600)});
    let mut results = Vec::new();
    for (alg, name, key_alg) in [
        (jsonwebtoken::Algorithm::RS256, "rs256", KeyAlgorithm::Rs256),
        (jsonwebtoken::Algorithm::ES256, "es256", KeyAlgorithm::Es256),
    ] {
        let mut args = api_args(&redis, &db, short_ttls(300, 1200));
        args.auth = AuthArgs {
            jwt_public_key: Some(key_file(&format!("{name}-public.pem"))),
            jwt_algorithm: Some(key_alg),
            ..auth_defaults()
        };
        let api = TestApi::serve(args).await;
        let good = signed_with(&format!("{name}-private.pem"), alg, claims.clone());
        let public = std::fs::read(key_file(&format!("{name}-public.pem"))).unwrap();
        let confused = jsonwebtoken::encode(
            &Default::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap();

        let ping = |t: String| {
            api.http
                .post(format!("{}/v1/users/ann/ping", api.base))
                .bearer_auth(t)
        };
        results.push((send(ping(good)).await.0, send(ping(confused)).await.0));
    }

    assert_eq!(results, [(200, 401), (200, 401)]);
}

/// `exp` gets the configured leeway and no more; issuer and audience are checked when set.
#[tokio::test]
async fn expiry_leeway_issuer_and_audience() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.auth = AuthArgs {
        jwt_secret_file: Some(secret_file(dir.path())),
        jwt_issuer: Some("https://id.example".into()),
        jwt_audience: Some("presence".into()),
        ..auth_defaults()
    };
    let api = TestApi::serve(args).await;
    let token = |exp: i64, iss: &str, aud: &str| {
        hs256_token(&json!({"sub": "ann", "exp": epoch_secs(exp), "iss": iss, "aud": aud}))
    };
    let cases = [
        (token(3600, "https://id.example", "presence"), 200),
        (token(-5, "https://id.example", "presence"), 200),
        (token(-120, "https://id.example", "presence"), 401),
        (token(3600, "https://evil.example", "presence"), 401),
        (token(3600, "https://id.example", "other"), 401),
    ];

    let mut got = Vec::new();
    for (t, _) in &cases {
        let url = format!("{}/v1/users/ann/presence", api.base);
        got.push(send(api.http.get(url).bearer_auth(t)).await.0);
    }

    let want: Vec<u16> = cases.iter().map(|(_, s)| *s).collect();
    assert_eq!(got, want);
}

/// A token the API has already verified is remembered, but not past its expiry: the
/// request after `exp` (plus the leeway) is refused like any expired token, and a
/// remembered admin token still acts for anyone while it lasts.
#[tokio::test]
async fn a_remembered_token_still_expires() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let mut args = api_args(&redis, &db, short_ttls(300, 1200));
    args.auth = AuthArgs {
        jwt_secret_file: Some(secret_file(dir.path())),
        jwt_leeway: 0,
        ..auth_defaults()
    };
    let api = TestApi::serve(args).await;
    let exp = epoch_secs(2);
    let token = hs256_token(&json!({"sub": "ann", "exp": exp}));
    let ping = || api.http.post(format!("{}/v1/users/ann/ping", api.base));
    let admin = admin_token();
    let as_admin = || api.http.post(format!("{}/v1/users/bob/ping", api.base));

    let mut before = Vec::new();
    for _ in 0..3 {
        before.push(send(ping().bearer_auth(&token)).await.0);
        before.push(send(as_admin().bearer_auth(&admin)).await.0);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    while epoch_secs(0) <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = send(ping().bearer_auth(&token)).await;

    assert_eq!(before, [200, 200, 200, 200, 200, 200]);
    assert_eq!((after.0, after.1.as_deref()), (401, Some("Bearer")));
}

/// Health and readiness need no token: load balancers carry none.
#[tokio::test]
async fn probes_need_no_token() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let api = api_with_secret(&redis, &db, dir.path()).await;

    let health = send(api.http.get(format!("{}/healthz", api.base))).await.0;
    let ready = send(api.http.get(format!("{}/readyz", api.base))).await.0;

    assert_eq!((health, ready), (200, 200));
}

/// With no key configured the binary refuses to start and names the flags; with
/// `--insecure-no-auth` it starts and warns.
#[tokio::test]
async fn refuses_to_start_open_unless_told() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let flags = store_flags(&redis, &db.path());

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_presence-api"))
        .args(&flags)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let mut open_flags = flags.clone();
    open_flags.push("--insecure-no-auth".into());
    let open = ApiProcess::start(&open_flags).await;

    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
    assert!(
        open.log_text().contains("authentication is off"),
        "{}",
        open.log_text()
    );
}

/// Neither the secret nor any token, good or bad, reaches the log, even at debug level.
#[tokio::test]
async fn tokens_and_secrets_are_never_logged() {
    let (redis, db, dir) = (
        RedisServer::start(),
        TestDb::new(),
        tempfile::tempdir().unwrap(),
    );
    let mut flags = store_flags(&redis, &db.path());
    flags.push("--jwt-secret-file".into());
    flags.push(secret_file(dir.path()).display().to_string());
    let api = ApiProcess::start_logging(&flags, "debug").await;
    let http = reqwest::Client::new();
    let good = user_token("ann");
    let expired = hs256_token(&json!({"sub": "ann", "exp": epoch_secs(-3600)}));

    for token in [&good, &expired, &"garbage-token-text".to_owned()] {
        let url = format!("{}/v1/users/ann/ping", api.base);
        http.post(url).bearer_auth(token).send().await.unwrap();
    }

    let log = api.log_text();
    assert!(log.contains("rejected a bearer token"), "{log}");
    for secret in [
        good.as_str(),
        expired.as_str(),
        "garbage-token-text",
        support::TEST_SECRET,
    ] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }
}
