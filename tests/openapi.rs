//! The OpenAPI document held to the router it describes.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{RedisServer, TestApi, TestDb, short_ttls};
use utoipa::OpenApi;

/// The files whose `.route(…)` calls build the API's router.
const ROUTER_SOURCES: [&str; 3] = [
    include_str!("../src/api/mod.rs"),
    include_str!("../src/metrics.rs"),
    include_str!("../src/api/openapi.rs"),
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every (path, method) the router serves, read from the calls that build it, so a route
/// added to the router without its documentation fails this test.
fn router_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for source in ROUTER_SOURCES {
        for call in source.split(".route(").skip(1) {
            let path = call.split('"').nth(1).expect("a route's path is a literal");
            let handlers = &call[..closing_paren(call)];
            for method in METHODS {
                if handlers.contains(&format!("{method}(")) {
                    routes.insert((path.to_owned(), method.to_owned()));
                }
            }
        }
    }
    routes
}

/// Where the `.route(` call this text follows closes.
fn closing_paren(call: &str) -> usize {
    let mut depth = 1;
    for (i, c) in call.char_indices() {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth == 0 {
            return i;
        }
    }
    panic!("unbalanced .route( call")
}

fn document() -> Value {
    serde_json::to_value(presence::api::ApiDoc::openapi()).unwrap()
}

/// The error statuses each route documents.
fn error_statuses(operation: &Value) -> Vec<&str> {
    let responses = operation["responses"].as_object().unwrap();
    responses
        .keys()
        .map(String::as_str)
        .filter(|s| s.starts_with(['4', '5']))
        .collect()
}

/// Every route of the router is in the document.
#[test]
fn every_route_is_documented() {
    let doc = document();

    let routes = router_routes();

    assert_eq!(doc["openapi"], "3.1.0");
    assert!(routes.len() >= 8, "too few routes found: {routes:?}");
    for (path, method) in &routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
}

/// Each route documents the errors it answers, each with the JSON error body.
#[test]
fn every_route_documents_its_errors() {
    let doc = document();
    let writes = vec!["400", "401", "403", "429", "503"];
    let expected = [
        ("/v1/users/{user_id}/ping", "post", writes.clone()),
        ("/v1/users/{user_id}/offline", "post", writes),
        (
            "/v1/users/{user_id}/presence",
            "get",
            vec!["400", "401", "503"],
        ),
        (
            "/v1/presence/query",
            "post",
            vec!["400", "401", "413", "415", "503"],
        ),
        ("/readyz", "get", vec!["503"]),
        ("/healthz", "get", vec![]),
        ("/metrics", "get", vec![]),
        ("/openapi.json", "get", vec![]),
    ];

    for (path, method, statuses) in &expected {
        let operation = &doc["paths"][path][method];
        assert_eq!(&error_statuses(operation), statuses, "{method} {path}");
        for status in statuses {
            let content = &operation["responses"][status]["content"]["application/json"];
            let schema = &content["schema"]["$ref"];
            assert_eq!(
                schema, "#/components/schemas/ErrorBody",
                "{method} {path} {status}"
            );
        }
    }
    let documented: BTreeSet<_> = expected
        .iter()
        .map(|(p, m, _)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(
        documented,
        router_routes(),
        "a route's errors are not listed here"
    );
}

/// The error schema is the body the API really sends: `error` and `message`, both text.
#[tokio::test]
async fn the_error_schema_matches_a_real_error() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;
    let schema = &document()["components"]["schemas"]["ErrorBody"];

    let (status, body) = api.presence("a%20b").await;

    assert_eq!(status, 400);
    let sent: BTreeSet<_> = body.as_object().unwrap().keys().cloned().collect();
    let documented: BTreeSet<_> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(sent, documented);
    assert_eq!(schema["required"], serde_json::json!(["error", "message"]));
    assert_eq!(schema["properties"]["error"]["type"], "string");
}

/// `GET /openapi.json` serves the document.
#[tokio::test]
async fn the_document_is_served() {
    let (redis, db) = (RedisServer::start(), TestDb::new());
    let api = TestApi::start(&redis, &db, short_ttls(300, 1200)).await;

    let (status, served) = api
        .send(api.http.get(format!("{}/openapi.json", api.base)))
        .await;

    assert_eq!(status, 200);
    assert_eq!(served, document());
}
