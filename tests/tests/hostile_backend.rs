//! The hostile corpus (`tests/hostile/backend.jsonl`) against the real
//! backend process: every request gets its documented status with a JSON
//! error body, nothing answers 5xx, and the backend keeps serving.

use std::io::Write;

use serde_json::{json, Value};
use testkit::{drop_databases, mysql_server, repo_root, unique_prefix, Backend, TOKEN};

fn gzip(parts: &[&[u8]]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for p in parts {
        e.write_all(p).expect("gzip");
    }
    e.finish().expect("gzip")
}

fn envelope(env: u32, i: usize) -> Value {
    json!({"id": format!("many-{i}"), "env_id": env, "name": "x", "timestamp": 0, "received_at": 0})
}

fn generate(kind: &str, env: u32) -> Vec<u8> {
    match kind {
        // 10 MB of zeros compresses to ~10 KB; a hundred concatenated gzip
        // members inflate to 1 GB.
        "gzip_bomb" => gzip(&[&vec![0u8; 10 << 20]]).repeat(100),
        "truncated_gzip" => {
            let full = gzip(&[serde_json::to_vec(&json!([envelope(env, 0)])).expect("json").as_slice()]);
            full[..full.len() / 2].to_vec()
        }
        "invalid_utf8" => b"[{\"id\":\"\xff\xfe\",\"env_id\":1,\"name\":\"x\",\"timestamp\":0,\"received_at\":0}]".to_vec(),
        "deep_properties" => format!(
            r#"[{{"id":"x","env_id":{env},"name":"x","timestamp":0,"received_at":0,"properties":{{"a":{}{}}}}}]"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        )
        .into_bytes(),
        "deep_array" => format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        "big_string" => serde_json::to_vec(&json!([{"id": "big", "env_id": env, "name": "x", "timestamp": 0,
            "received_at": 0, "properties": {"blob": "x".repeat(5 << 20)}}]))
        .expect("json"),
        "many_events" => serde_json::to_vec(&(0..100_000).map(|i| envelope(env, i)).collect::<Vec<_>>()).expect("json"),
        "over_limit" => vec![b' '; 9 << 20],
        other => panic!("unknown generator {other}"),
    }
}

#[test]
fn hostile_requests_get_their_documented_4xx_and_the_backend_keeps_serving() {
    let server = mysql_server();
    let prefix = unique_prefix("hostile");
    let backend = Backend::new(&format!("{server}/{prefix}_catalog"));
    backend.ok(&["shard", "add", "one", &format!("{server}/{prefix}_one")]);
    let env: u32 = backend
        .ok(&["env", "create", "web", "--shard", "one"])
        .trim()
        .parse()
        .expect("id");
    let serving = backend.serve(&[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("client");

    let corpus =
        std::fs::read_to_string(repo_root().join("tests/hostile/backend.jsonl")).expect("corpus");
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, line) in corpus.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let case: Value = serde_json::from_str(line).expect("corpus line is JSON");
        let name = case["name"].as_str().expect("name");
        let fill = |s: &str| {
            s.replace("{TOKEN}", TOKEN)
                .replace("{ENV}", &env.to_string())
                .replace(
                    "{UUID2}",
                    &protocol::uuid_v7(1_700_000_000_000, &[n as u8 + 1; 10]),
                )
                .replace(
                    "{UUID}",
                    &protocol::uuid_v7(1_700_000_000_000, &[n as u8; 10]),
                )
        };
        let body = match (case["body"].as_str(), case["generate"].as_str()) {
            (_, Some(kind)) => generate(kind, env),
            (Some(text), None) => fill(text).into_bytes(),
            (None, None) => Vec::new(),
        };
        let method =
            reqwest::Method::from_bytes(case["method"].as_str().unwrap_or("POST").as_bytes())
                .expect("method");
        let mut request = client.request(
            method,
            format!("{}{}", serving.base, case["path"].as_str().expect("path")),
        );
        for (k, v) in case["headers"].as_object().into_iter().flatten() {
            request = request.header(k.as_str(), fill(v.as_str().expect("header")).as_bytes());
        }
        let response = match request.body(body).send() {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: no answer: {e}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        let expected = case["expect"].as_u64().expect("expect") as u16;
        if status != expected {
            failures.push(format!(
                "{name}: expected {expected}, got {status}: {text:.300}"
            ));
        }
        if status >= 500 {
            failures.push(format!("{name}: 5xx"));
        }
        if status >= 400 {
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if !json["error"].is_string() || json["message"].as_str().is_none_or(|m| m.is_empty()) {
                failures.push(format!(
                    "{name}: error body is not {{error, message}}: {text:.200}"
                ));
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 60, "the corpus has {checked} cases");
    println!("{checked} hostile requests answered as documented");

    // Still serving: health, and a valid batch lands.
    assert!(client
        .get(format!("{}/healthz", serving.base))
        .send()
        .is_ok_and(|r| r.status() == 200));
    let ok = client
        .post(format!("{}/v1/ingest", serving.base))
        .bearer_auth(TOKEN)
        .json(&json!([{"id": "after-the-storm", "env_id": env, "name": "x", "timestamp": 0, "received_at": 0}]))
        .send()
        .expect("post");
    assert_eq!(ok.status(), 200);
    let status = serving.terminate();
    assert!(status.success(), "clean exit after the corpus: {status:?}");
    drop_databases(&server, &prefix);
}
