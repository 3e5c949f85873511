//! Edge figures under `wrangler dev` (workerd): wasm size, start-up and first
//! request, and answer latency next to a trivial worker in the same harness.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use serde_json::json;

use crate::{Figure, TOKEN};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// `wrangler dev` in its own process group: dropping it stops wrangler and
/// the workerd it started (a SIGKILL to wrangler alone would orphan workerd).
struct Wrangler(Child);

impl Drop for Wrangler {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        for _ in 0..50 {
            if self.0.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

fn wrangler(args: &[&str]) -> Wrangler {
    use std::os::unix::process::CommandExt;
    Wrangler(
        Command::new("scripts/wrangler.sh")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn wrangler dev"),
    )
}

async fn wait_ready(url: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().as_u16() < 500)
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} did not answer within {limit:?}");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (p50, p99) in ms of `n` POSTs with `concurrency` in flight.
async fn latencies(url: &str, key: &str, body: &[u8], n: usize, concurrency: usize) -> (f64, f64) {
    let client = reqwest::Client::new();
    let mut ms: Vec<f64> = stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            async move {
                let started = Instant::now();
                let response = client
                    .post(url)
                    .bearer_auth(key)
                    .header("content-type", "application/json")
                    .body(body.to_vec())
                    .send()
                    .await
                    .expect("post");
                assert_eq!(
                    response.status(),
                    202,
                    "{}",
                    response.text().await.unwrap_or_default()
                );
                started.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    ms.sort_by(|a, b| a.total_cmp(b));
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

fn events(n: usize) -> Vec<u8> {
    let list: Vec<_> = (0..n)
        .map(|i| json!({"event": "page_view", "user_id": format!("u{i}"), "properties": {"path": "/pricing", "ref": "ad", "plan": "pro", "amount": 12.5, "step": i}}))
        .collect();
    serde_json::to_vec(&list).expect("json")
}

pub async fn figures(backend_port: u16, env_id: u32, runs: usize, figures: &mut Vec<Figure>) {
    // Size of what `wrangler deploy` uploads.
    let wasm =
        std::fs::read("build/index_bg.wasm").expect("build/index_bg.wasm (scripts/build-edge.sh)");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&wasm).expect("gzip");
    let gzipped = gz.finish().expect("gzip").len() as f64 / 1024.0;
    figures.push(Figure {
        name: format!(
            "worker wasm size, gzip ({:.0} KB raw)",
            wasm.len() as f64 / 1024.0
        ),
        value: gzipped,
        unit: "KB",
        reference: "target 1024".into(),
        ratio: Some(gzipped / 1024.0),
        target: "< 1 MB gzip".into(),
    });

    let out = Command::new("node")
        .args([
            "scripts/key.mjs",
            "create",
            "--env-id",
            &env_id.to_string(),
            "--env-name",
            "bench",
        ])
        .output()
        .expect("key.mjs");
    assert!(
        out.status.success(),
        "key.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();

    let trivial = Path::new(".dev/bench-trivial");
    std::fs::create_dir_all(trivial).expect("dir");
    std::fs::write(
        trivial.join("index.js"),
        "export default { fetch() { return new Response('{\"accepted\":1}', { status: 202, headers: { 'content-type': 'application/json' } }); } };\n",
    )
    .expect("trivial worker");
    std::fs::write(
        trivial.join("wrangler.toml"),
        "name = \"trivial\"\nmain = \"index.js\"\ncompatibility_date = \"2026-04-20\"\n",
    )
    .expect("trivial config");

    let (edge_port, trivial_port) = (free_port(), free_port());
    let backend_var = format!("BACKEND_URL:http://127.0.0.1:{backend_port}");
    let token_var = format!("INGEST_TOKEN:{TOKEN}");
    let spawned = Instant::now();
    let _edge = wrangler(&[
        "dev",
        "--ip",
        "127.0.0.1",
        "--port",
        &edge_port.to_string(),
        "--var",
        &backend_var,
        "--var",
        &token_var,
    ]);
    let edge = format!("http://127.0.0.1:{edge_port}");
    wait_ready(&format!("{edge}/healthz"), Duration::from_secs(120)).await;
    let ready = spawned.elapsed();
    let first = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{edge}/v1/events"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(events(1))
        .send()
        .await
        .expect("first request");
    assert_eq!(response.status(), 202);
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;
    figures.push(Figure {
        name: format!(
            "edge first request after start-up (wrangler dev ready after {:.1} s)",
            ready.as_secs_f64()
        ),
        value: first_ms,
        unit: "ms",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });

    let config = trivial.join("wrangler.toml");
    let _trivial = wrangler(&[
        "dev",
        "--config",
        config.to_str().unwrap_or_default(),
        "--ip",
        "127.0.0.1",
        "--port",
        &trivial_port.to_string(),
    ]);
    let trivial_url = format!("http://127.0.0.1:{trivial_port}");
    wait_ready(&trivial_url, Duration::from_secs(120)).await;

    for (label, body) in [("1-event", events(1)), ("50-event", events(50))] {
        for (concurrency, n) in [(1usize, 300usize), (32, 2000)] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                ours.push(
                    latencies(&format!("{edge}/v1/events"), &key, &body, n, concurrency).await,
                );
                theirs.push(
                    latencies(
                        &format!("{trivial_url}/v1/events"),
                        &key,
                        &body,
                        n,
                        concurrency,
                    )
                    .await,
                );
            }
            let p = |v: &Vec<(f64, f64)>, f: fn(&(f64, f64)) -> f64| {
                crate::median(v.iter().map(f).collect())
            };
            let (p50, p99) = (p(&ours, |x| x.0), p(&ours, |x| x.1));
            let (t50, t99) = (p(&theirs, |x| x.0), p(&theirs, |x| x.1));
            figures.push(Figure {
                name: format!("edge answer p50, {label}, concurrency {concurrency}"),
                value: p50,
                unit: "ms",
                reference: format!("trivial worker {t50:.2}"),
                ratio: Some(p50 / t50),
                target: "-".into(),
            });
            figures.push(Figure {
                name: format!("edge answer p99, {label}, concurrency {concurrency}"),
                value: p99,
                unit: "ms",
                reference: format!("trivial worker {t99:.2} (overhead {:.2})", p99 - t99),
                ratio: Some(p99 / t99),
                target: if label == "1-event" {
                    "overhead ≤ 1 ms".into()
                } else {
                    "-".into()
                },
            });
        }
    }
}
