//! Direct ingest under a crash: the backend is SIGKILLed twice while clients
//! post events with their own ids to its public `/v1/events` and retry every
//! answer that is not a 2xx. A 2xx from the backend means stored: every
//! event that got one is in the shard, and exactly once.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::json;
use testkit::{drop_databases, free_port, mysql_server, sql, unique_prefix, Backend};

const CLIENTS: usize = 6;
const REQUESTS_PER_CLIENT: usize = 150;

#[test]
fn every_event_answered_2xx_is_stored_once_across_sigkills() {
    let server = mysql_server();
    let prefix = unique_prefix("crash");
    let _cleanup = DropDatabases(server.clone(), prefix.clone());
    let backend = Backend::new(&format!("{server}/{prefix}_catalog"));
    backend.ok(&["migrate"]);
    backend.ok(&["shard", "add", "one", &format!("{server}/{prefix}_one")]);
    let env: u32 = backend
        .ok(&["env", "create", "web", "--shard", "one"])
        .trim()
        .parse()
        .expect("env id");
    let key = backend
        .ok(&["key", "create", "web"])
        .lines()
        .last()
        .expect("a key")
        .trim()
        .to_owned();
    let port = free_port();
    let mut serving = Some(backend.serve_on(port, &[]));
    let url = format!("http://127.0.0.1:{port}/v1/events");

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(90);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, key) = (url.clone(), key.clone());
            let (acked, refused, done, stop) =
                (acked.clone(), refused.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                for r in 0..REQUESTS_PER_CLIENT {
                    // 1 to 4 events per request, each with its own id.
                    let ids: Vec<String> = (0..1 + r % 4)
                        .map(|i| {
                            let n = ((c * REQUESTS_PER_CLIENT + r) * 4 + i) as u64;
                            protocol::uuid_v7(1_700_000_000_000 + n, &[(c + 1) as u8; 10])
                        })
                        .collect();
                    let body: Vec<_> = ids
                        .iter()
                        .map(|id| json!({"event": "crash_test", "id": id, "properties": {"client": c}}))
                        .collect();
                    loop {
                        assert!(Instant::now() < deadline, "client {c} never got its 2xx");
                        let answer = http
                            .post(&url)
                            .bearer_auth(&key)
                            .json(&body)
                            .send()
                            .map(|r| r.status());
                        match answer {
                            Ok(status) if status.is_success() => break,
                            _ => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    acked.lock().expect("acked").extend(ids);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Two crashes, each while the clients are mid-way.
    let total = CLIENTS * REQUESTS_PER_CLIENT;
    for threshold in [total / 4, total / 2] {
        while done.load(Ordering::Relaxed) < threshold {
            assert!(Instant::now() < deadline, "the clients stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut killed = serving.take().expect("serving");
        killed.child.kill().expect("SIGKILL");
        killed.child.wait().expect("reaped");
        std::thread::sleep(Duration::from_millis(300));
        serving = Some(backend.serve_on(port, &[]));
    }
    for client in clients {
        if client.join().is_err() {
            stop.store(true, Ordering::Relaxed);
            panic!("a client failed");
        }
    }

    let acked = acked.lock().expect("acked").clone();
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the kills happened mid-load (some requests were refused or cut)"
    );
    let stored = sql(
        &server,
        &format!("SELECT LOWER(HEX(id)) FROM `{prefix}_one`.events WHERE env_id = {env}"),
    );
    let stored: Vec<&str> = stored.lines().collect();
    let unique: BTreeSet<&str> = stored.iter().copied().collect();
    assert_eq!(stored.len(), unique.len(), "no event is stored twice");
    let acked_hex: BTreeSet<String> = acked.iter().map(|id| id.replace('-', "")).collect();
    let missing: Vec<_> = acked_hex
        .iter()
        .filter(|id| !unique.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events are not stored: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        unique.len(),
        acked_hex.len(),
        "only the events sent are stored"
    );
    // The delivery ledger was written with the rows, in their transaction:
    // the kills lost none of it. Every acceptance (a 2xx, or a commit whose
    // answer a kill cut off) is a stored row or a re-send of one.
    let ledger = sql(
        &server,
        &format!(
            "SELECT outcome, SUM(n) FROM `{prefix}_one`.delivery WHERE env_id = {env} GROUP BY outcome"
        ),
    );
    let of = |outcome: &str| -> u64 {
        ledger
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{outcome}\t")))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    };
    assert_eq!(of("stored"), unique.len() as u64, "{ledger}");
    assert_eq!(
        of("accepted"),
        of("stored") + of("resent"),
        "accepted = stored + resent after two SIGKILLs: {ledger}"
    );
    drop(serving);
}

/// Drops the test's databases however the test ends.
struct DropDatabases(String, String);

impl Drop for DropDatabases {
    fn drop(&mut self) {
        drop_databases(&self.0, &self.1);
    }
}
