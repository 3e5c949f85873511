//! The description against the router, and `edge/openapi.json` against the
//! types. The answers themselves are checked against a running backend in
//! `tests/tests/openapi.rs`.

use std::{collections::BTreeSet, sync::Arc};

use axum::{body::Body, http::Request};
use serde_json::Value;
use tower::ServiceExt as _;

use super::*;
use crate::{
    app,
    catalog::Catalog,
    store::memory::{MemoryCatalog, MemoryStore},
    AppState, Ports,
};

const TOKEN: &str = "unit-ingest-token-0123456789abcdef0123456789";

fn config() -> Config {
    Config::new("mysql://nobody@127.0.0.1:1/none", TOKEN)
}

async fn state() -> AppState {
    let catalog = Arc::new(MemoryCatalog::new());
    catalog.add_shard(1, "a");
    let opened = Catalog::open(catalog, config().catalog_refresh())
        .await
        .expect("memory catalog");
    AppState::from_parts(config(), opened, Ports::all(Arc::new(MemoryStore::new())))
}

/// The paths `api::app` routes, read from its source: every `.route("…"`.
/// A route added there is found here whatever its handler.
fn routed_paths() -> BTreeSet<String> {
    let source = include_str!("../api.rs");
    let mut paths = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let trimmed = rest.trim_start();
        if let Some(literal) = trimmed.strip_prefix('"') {
            if let Some(end) = literal.find('"') {
                paths.insert(literal[..end].to_owned());
            }
        }
    }
    paths
}

fn described(doc: &OpenApi) -> BTreeSet<(String, String)> {
    operations_of(doc).into_iter().collect()
}

#[tokio::test]
async fn every_route_of_the_router_is_described() {
    let doc = backend(&config());
    let ops = described(&doc);
    let routed = routed_paths();
    assert!(routed.len() >= 15, "the source scan found {routed:?}");
    let router = app(state().await);
    for path in &routed {
        assert!(
            doc.paths.paths.contains_key(path),
            "{path} is routed in api.rs but not described in openapi::backend_operations"
        );
        // Every method the route takes (anything but 405) is an operation.
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let response = router
                .clone()
                .oneshot(
                    Request::builder()
                        .method(method)
                        .uri(path)
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("answer");
            let takes = response.status().as_u16() != 405;
            let listed = ops.contains(&(method.to_owned(), path.clone()));
            assert_eq!(
                takes,
                listed,
                "{method} {path}: the router answers {}, the description {}",
                response.status(),
                if listed { "lists it" } else { "does not" }
            );
        }
    }
    // The other way: every described backend path is routed, or is the public door's.
    for (method, path) in &ops {
        let concrete = path.replace("{writeKey}", "sk_example");
        assert!(
            routed.contains(path) || intake::door::route(method, &concrete).is_ok(),
            "{method} {path} is described but neither routed nor a public door"
        );
    }
}

#[test]
fn every_public_route_is_described_at_both_doors() {
    for doc in [backend(&config()), edge()] {
        let ops = described(&doc);
        let mut public = vec![
            ("POST", "/v1/events".to_owned()),
            ("OPTIONS", "/v1/events".to_owned()),
            ("GET", "/healthz".to_owned()),
            ("GET", "/v1/projects/{writeKey}/settings".to_owned()),
            ("OPTIONS", "/v1/projects/{writeKey}/settings".to_owned()),
        ];
        for (path, _) in intake::segment::ENDPOINTS {
            public.push(("POST", path.to_owned()));
            public.push(("OPTIONS", path.to_owned()));
        }
        for (method, path) in public {
            assert!(
                ops.contains(&(method.to_owned(), path.clone())),
                "{method} {path} is not described"
            );
            let concrete = path.replace("{writeKey}", "sk_example");
            assert!(
                intake::door::route(method, &concrete).is_ok(),
                "{method} {path}"
            );
        }
    }
    // The edge serves the public doors only.
    let edge_ops = described(&edge());
    assert!(edge_ops.iter().all(|(_, p)| !p.starts_with("/v1/ingest")
        && !p.starts_with("/v1/stats")
        && p != "/metrics"));
}

#[test]
fn statuses_and_codes_come_from_the_error_mappings() {
    let ops = backend_operations(&config());
    let ingest = ops.iter().find(|o| o.id == "ingest").expect("ingest");
    assert_eq!(ingest.statuses(), [200, 207, 400, 401, 413, 415, 422, 503]);
    let codes: Vec<_> = ingest.failures.iter().map(|f| f.code).collect();
    assert!(codes.contains(&Error::EmptyBatch.code()));
    // The Segment door says 400 where /v1/events says 413/415/422.
    let public = public_operations(Runtime::Backend);
    let events = public.iter().find(|o| o.id == "events").expect("events");
    assert_eq!(events.statuses(), [202, 400, 401, 413, 415, 422, 429, 503]);
    let track = public
        .iter()
        .find(|o| o.id == "segment_track")
        .expect("track");
    assert_eq!(track.statuses(), [200, 400, 401, 429, 503]);
    let edge_events = public_operations(Runtime::Edge);
    let edge_events = edge_events
        .iter()
        .find(|o| o.id == "events")
        .expect("events");
    assert!(edge_events
        .failures
        .iter()
        .any(|f| f.code == intake::Error::QueueUnavailable.code()));
}

#[test]
fn the_description_is_openapi_3_1_with_unique_operation_ids_and_its_refs_resolve() {
    let edge: Value = serde_json::from_str(&edge_json()).expect("json");
    refs_resolve(&edge);
    let doc: Value =
        serde_json::from_str(&backend(&config()).to_json().expect("json")).expect("json");
    refs_resolve(&doc);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    for (_, item) in doc["paths"].as_object().expect("paths") {
        for (_, op) in item.as_object().expect("item") {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            }
        }
    }
    // Limits from protocol's constants.
    let id = &doc["components"]["schemas"]["Envelope"]["properties"]["id"];
    assert_eq!(id["maxLength"], protocol::MAX_ID_LEN);
    assert_eq!(
        doc["components"]["schemas"]["Batch"]["maxItems"],
        config().max_batch_events
    );
}

fn refs_resolve(doc: &Value) {
    assert_eq!(doc["openapi"], "3.1.0");
    let text = doc.to_string();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\"$ref\":\"#/components/schemas/") {
        rest = &rest[at + "\"$ref\":\"#/components/schemas/".len()..];
        let name = &rest[..rest.find('"').expect("end")];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "$ref to {name}, which is not among the components"
        );
    }
}

/// `edge/openapi.json` is what [`edge`] makes of the types now. Refresh it
/// with `SLUICE_UPDATE_OPENAPI=1 cargo test -p sluice-backend openapi`.
#[test]
fn edge_openapi_json_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../edge/openapi.json");
    let fresh = edge_json();
    if std::env::var_os("SLUICE_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &fresh).expect("write edge/openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == fresh,
        "edge/openapi.json is stale: run SLUICE_UPDATE_OPENAPI=1 cargo test -p sluice-backend openapi"
    );
}
