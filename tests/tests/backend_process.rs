//! The backend as an operator runs it: the CLI, `serve`, SIGTERM.

use serde_json::json;
use testkit::{drop_databases, mysql_server, sql, unique_prefix, Backend, TOKEN};

fn batch(env_id: u32, n: u64) -> serde_json::Value {
    let events: Vec<_> = (0..n)
        .map(|i| {
            json!({"id": protocol::uuid_v7(1_700_000_000_000 + i, &[(i % 251) as u8; 10]), "env_id": env_id,
                   "name": format!("e{}", i % 7), "timestamp": 1_700_000_000_000i64 + i as i64 * 10,
                   "received_at": 1_700_000_000_000i64, "properties": {"i": i}, "context": {}})
        })
        .collect();
    json!(events)
}

#[test]
fn operator_flow_from_cli_to_graceful_shutdown() {
    let server = mysql_server();
    let prefix = unique_prefix("cli");
    let backend = Backend::new(&format!("{server}/{prefix}_catalog"));

    backend.ok(&["migrate"]);
    assert_eq!(
        backend
            .ok(&["shard", "add", "one", &format!("{server}/{prefix}_one")])
            .trim(),
        "1"
    );
    assert_eq!(
        backend
            .ok(&["shard", "add", "two", &format!("{server}/{prefix}_two")])
            .trim(),
        "2"
    );
    let web: u32 = backend
        .ok(&["env", "create", "web", "--shard", "one"])
        .trim()
        .parse()
        .expect("env id");
    let listing = backend.ok(&["shard", "list"]);
    assert!(
        listing.contains("one") && listing.contains("two"),
        "{listing}"
    );
    if server.contains(':') && reqwest::Url::parse(&server).is_ok_and(|u| u.password().is_some()) {
        assert!(listing.contains("***"), "passwords are redacted: {listing}");
    }

    // Clear errors for what does not exist or exists already.
    for (args, expected) in [
        (
            vec!["env", "create", "web", "--shard", "one"],
            "already exists",
        ),
        (
            vec!["env", "create", "api", "--shard", "nope"],
            "unknown shard",
        ),
        (vec!["env", "promote", "web"], "no secondary"),
        (
            vec!["env", "migrate", "ghost", "--to", "two"],
            "unknown environment",
        ),
        (
            vec!["shard", "add", "one", "mysql://x@127.0.0.1:1/db"],
            "already exists",
        ),
        (
            vec!["shard", "add", "three", "mysql://x@127.0.0.1:1/db"],
            "unreachable",
        ),
    ] {
        let out = backend.run(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    // Refuses to serve with a short token.
    let out = backend
        .command(&["serve"])
        .env("SLUICE_INGEST_TOKEN", "short")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"));

    // Metrics and read tokens from the CLI.
    backend.ok(&[
        "metric", "add", "web", "revenue", "--event", "purchase", "--sum", "amount",
    ]);
    backend.ok(&[
        "metric", "add", "web", "orders", "--event", "purchase", "--count",
    ]);
    let out = backend.run(&[
        "metric", "add", "web", "bad", "--event", "purchase", "--sum", "a", "--count",
    ]);
    assert!(!out.status.success(), "two aggregates at once are refused");
    let metrics = backend.ok(&["metric", "list", "web"]);
    assert!(
        metrics.contains("revenue") && metrics.contains("amount") && metrics.contains("orders"),
        "{metrics}"
    );
    backend.ok(&["metric", "remove", "web", "orders"]);
    assert!(!backend.ok(&["metric", "list", "web"]).contains("orders"));
    let token = backend.ok(&["env", "token", "web"]);
    assert!(token.starts_with("srt_"), "{token}");
    let tokens = backend.ok(&["env", "tokens", "web"]);
    assert!(
        tokens.contains(&token[..12]) && !tokens.contains(&token[12..]),
        "only the prefix is listed: {tokens}"
    );
    backend.ok(&["env", "token-revoke", "web", &token[..12]]);
    assert!(!backend
        .run(&["env", "token-revoke", "web", &token[..12]])
        .status
        .success());

    backend.ok(&["env", "migrate", "web", "--to", "two"]);
    assert!(backend.ok(&["env", "list"]).contains("two"));

    // Retention from the CLI: set, shown, run on both shards, removed.
    assert!(backend
        .ok(&["env", "retention", "web", "--days", "30"])
        .contains("older than 30 days"));
    assert!(backend
        .ok(&["env", "show", "web"])
        .contains("retention  30 days"));
    let removed = backend.ok(&["retention", "run", "--env", "web"]);
    let rows: Vec<&str> = removed.lines().filter(|l| l.starts_with("web ")).collect();
    assert!(
        rows.len() == 2 && rows[0].contains(" one ") && rows[1].contains(" two "),
        "one line per shard of a migrating environment: {removed}"
    );
    for (args, expected) in [
        (vec!["env", "retention", "web", "--days", "0"], "at least 1"),
        (vec!["env", "retention", "web"], "--days"),
    ] {
        let out = backend.run(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    backend.ok(&["env", "retention", "web", "--none"]);
    assert!(backend.ok(&["env", "show", "web"]).contains("retention  -"));
    let out = backend.run(&["retention", "run", "--env", "web"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no retention"));

    let serving = backend.serve(&[]);
    let client = reqwest::blocking::Client::new();
    let response = client
        .post(format!("{}/v1/ingest", serving.base))
        .bearer_auth(TOKEN)
        .json(&batch(web, 5000))
        .send()
        .expect("post");
    assert_eq!(response.status(), 200);

    // SIGTERM while a batch is in flight: it finishes, counters flush, exit 0.
    let base = serving.base.clone();
    let body =
        serde_json::to_vec(&batch(web, 20_000).as_array().expect("array")[5000..]).expect("json");
    let in_flight = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(format!("{base}/v1/ingest"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let status = serving.terminate();
    assert!(status.success(), "exit status {status:?}");
    let answered = in_flight.join().expect("thread");
    eprintln!("in-flight request during SIGTERM: {answered:?}");
    let stored = |db: &str| {
        sql(
            &server,
            &format!("SELECT COUNT(*) FROM {prefix}_{db}.events"),
        )
    };
    let counted = |db: &str| {
        sql(
            &server,
            &format!("SELECT COALESCE(SUM(events), 0) FROM {prefix}_{db}.event_counts_minute"),
        )
    };
    match answered {
        Ok(200) => assert_eq!(stored("one"), "20000", "the in-flight batch finished"),
        // The request may have been refused before it was accepted: then none of it is stored.
        other => assert_eq!(
            stored("one"),
            "5000",
            "in-flight request answered {other:?}: nothing half-written"
        ),
    }
    for db in ["one", "two"] {
        assert_eq!(
            stored(db),
            counted(db),
            "counters of shard {db} flushed before exit"
        );
    }

    backend.ok(&["env", "promote", "web"]);
    sql(
        &server,
        &format!("DELETE FROM {prefix}_two.event_counts_minute"),
    );
    let rebuilt = backend.ok(&[
        "counters",
        "rebuild",
        "--env",
        "web",
        "--since",
        "2023-01-01T00:00:00Z",
    ]);
    assert!(
        rebuilt.contains(&format!("{} events counted", stored("two"))),
        "{rebuilt}"
    );
    assert_eq!(counted("two"), stored("two"));

    // Export from the (new) primary: to a file and to stdout alike, every
    // stored event once; --after resumes right after a line.
    let range = ["--from", "1700000000000", "--to", "2023-11-14T22:16:40Z"];
    let file = std::env::temp_dir().join(format!("{prefix}.ndjson"));
    let file_arg = file.to_string_lossy().into_owned();
    let mut args = vec!["export", "web"];
    args.extend(range);
    let stdout = backend.ok(&args);
    args.extend(["--out", &file_arg]);
    assert_eq!(backend.ok(&args), "", "nothing on stdout with --out");
    let written = std::fs::read_to_string(&file).expect("the export file");
    let _ = std::fs::remove_file(&file);
    assert_eq!(written, stdout);
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len().to_string(), stored("two"));
    let id = |line: &str| -> String {
        let event: protocol::Envelope = serde_json::from_str(line).expect("an envelope per line");
        event.id
    };
    let middle = id(lines[100]);
    let mut args = vec!["export", "web", "--after", &middle];
    args.extend(range);
    let rest = backend.ok(&args);
    assert_eq!(rest.lines().collect::<Vec<_>>(), lines[101..]);
    let out = backend.run(&["export", "web", "--from", "5000", "--to", "5000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from must be before to"));

    drop_databases(&server, &prefix);
}

#[test]
fn two_backend_processes_keep_one_set_of_counters() {
    let server = mysql_server();
    let prefix = unique_prefix("two");
    let backend = Backend::new(&format!("{server}/{prefix}_catalog"));
    backend.ok(&["shard", "add", "one", &format!("{server}/{prefix}_one")]);
    let web: u32 = backend
        .ok(&["env", "create", "web", "--shard", "one"])
        .trim()
        .parse()
        .expect("env id");
    let (a, b) = (backend.serve(&[]), backend.serve(&[]));
    let all = batch(web, 4000);
    let all = all.as_array().expect("array");
    let client = reqwest::blocking::Client::new();
    // Overlapping halves: ids 1500..2500 go to both processes.
    for (serving, part) in [(&a, &all[..2500]), (&b, &all[1500..])] {
        let response = client
            .post(format!("{}/v1/ingest", serving.base))
            .bearer_auth(TOKEN)
            .json(&part)
            .send()
            .expect("post");
        assert_eq!(response.status(), 200);
    }
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    let stored = sql(
        &server,
        &format!("SELECT COUNT(*) FROM {prefix}_one.events"),
    );
    let counted = sql(
        &server,
        &format!("SELECT COALESCE(SUM(events), 0) FROM {prefix}_one.event_counts_minute"),
    );
    assert_eq!(stored, "4000");
    assert_eq!(
        counted, "4000",
        "each row counted once across the two processes"
    );
    drop_databases(&server, &prefix);
}
