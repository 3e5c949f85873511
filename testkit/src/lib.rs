//! The one set of test helpers (used by backend/tests, tests/ and bench/):
//! the MySQL server and per-test database names, the backend binary as a
//! process, envelopes. The node tests under `tests/edge/` drive the worker
//! the same way (tests/edge/harness.mjs).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub const TOKEN: &str = "e2e-ingest-token-0123456789abcdef0123456789";

/// A valid envelope of `env_id` as JSON (user u1, session s1, two
/// properties, a German context), `received_at` 5 ms after `ts`.
pub fn envelope(env_id: u32, id: &str, name: &str, ts: i64) -> serde_json::Value {
    serde_json::json!({"id": id, "env_id": env_id, "name": name, "timestamp": ts, "received_at": ts + 5,
           "user_id": "u1", "session_id": "s1", "properties": {"amount": 3, "sku": "A-1"},
           "context": {"country": "DE", "colo": "FRA"}})
}

/// The `n`th of a series of distinct UUIDv7 ids.
pub fn uuid(n: u64) -> String {
    protocol::uuid_v7(1_700_000_000_000 + n, &[n as u8; 10])
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The MySQL server (no database part): `SLUICE_TEST_MYSQL_URL`, else the
/// private MariaDB of `scripts/mysql.sh`.
pub fn mysql_server() -> String {
    if let Ok(url) = std::env::var("SLUICE_TEST_MYSQL_URL") {
        return url.trim_end_matches('/').to_string();
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/mysql.sh"))
        .output()
        .expect("run scripts/mysql.sh");
    assert!(
        out.status.success(),
        "scripts/mysql.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// The backend binary built by `cargo build -p sluice-backend` (the Makefile does).
pub fn backend_bin() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let bin = target.join("debug/backend");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sluice-backend` first",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A unique database-name prefix for one test.
pub fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("sluice_e2e_{tag}_{}_{nanos}", std::process::id())
}

pub struct Backend {
    pub catalog_url: String,
    pub envs: Vec<(String, String)>,
}

impl Backend {
    pub fn new(catalog_url: &str) -> Self {
        Self {
            catalog_url: catalog_url.into(),
            envs: vec![
                ("SLUICE_DATABASE_URL".into(), catalog_url.into()),
                ("SLUICE_INGEST_TOKEN".into(), TOKEN.into()),
                ("SLUICE_LOG_FORMAT".into(), "text".into()),
            ],
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(backend_bin());
        cmd.args(args).envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run backend")
    }

    /// Run an admin command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "backend {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// Start `backend serve` on a free port and wait for `/healthz`.
    pub fn serve(&self, extra_env: &[(&str, &str)]) -> Serving {
        self.serve_on(free_port(), extra_env)
    }

    /// Start `backend serve` on `port` and wait for `/healthz`.
    pub fn serve_on(&self, port: u16, extra_env: &[(&str, &str)]) -> Serving {
        let child = self
            .command(&["serve"])
            .env("SLUICE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn backend serve");
        let serving = Serving {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if reqwest::blocking::get(format!("{}/healthz", serving.base))
                .is_ok_and(|r| r.status().is_success())
            {
                return serving;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("backend did not become healthy on port {port}");
    }
}

/// Drop every database whose name starts with `prefix`.
pub fn drop_databases(server: &str, prefix: &str) {
    let drops = sql(
        server,
        &format!("SELECT CONCAT('DROP DATABASE `', schema_name, '`;') FROM information_schema.schemata WHERE schema_name LIKE '{prefix}%'"),
    );
    if !drops.is_empty() {
        sql(server, &drops);
    }
}

pub struct Serving {
    pub child: Child,
    pub base: String,
}

impl Serving {
    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "backend did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a SQL query with the `mariadb` client and return its tab-separated output.
pub fn sql(server: &str, query: &str) -> String {
    let url = reqwest::Url::parse(server).expect("server url");
    let out = Command::new("mariadb")
        .args([
            "-h",
            url.host_str().unwrap_or("127.0.0.1"),
            "-P",
            &url.port().unwrap_or(3306).to_string(),
        ])
        .args(["-u", url.username()])
        .arg(format!("-p{}", url.password().unwrap_or("")))
        .args(["-N", "-B", "-e", query])
        .output()
        .expect("mariadb client");
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// `SLUICE_MAX_BODY_BYTES` the backend must run with for [`bad_ingest_requests`].
pub const BAD_INPUT_MAX_BODY_BYTES: usize = 64 * 1024;
/// `SLUICE_MAX_BATCH_EVENTS` the backend must run with for [`bad_ingest_requests`].
pub const BAD_INPUT_MAX_BATCH_EVENTS: usize = 50;

/// One request `POST /v1/ingest` must refuse, and how.
pub struct BadRequest {
    pub what: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    pub status: u16,
    pub code: &'static str,
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Every kind of bad input to `POST /v1/ingest` with its documented status
/// and error code, for environment `env_id` (known to the backend; 999,999
/// must not be) and ingest token `token`, on a backend with
/// [`BAD_INPUT_MAX_BODY_BYTES`] and [`BAD_INPUT_MAX_BATCH_EVENTS`]. The
/// backend's unit tests (in-memory store) and its MariaDB tests share it.
pub fn bad_ingest_requests(env_id: u32, token: &str) -> Vec<BadRequest> {
    use serde_json::{json, Value};
    let auth = ("authorization", format!("Bearer {token}"));
    let ct = ("content-type", "application/json".to_owned());
    let gzipped = ("content-encoding", "gzip".to_owned());
    let js = |v: Value| serde_json::to_vec(&v).expect("json");
    let one = js(json!([envelope(env_id, &uuid(1), "x", 1_700_000_000_000)]));
    let too_many: Vec<Value> = (0..BAD_INPUT_MAX_BATCH_EVENTS as u64 + 1)
        .map(|i| envelope(env_id, &uuid(i), "x", 0))
        .collect();
    let huge = json!([{"id": "x", "env_id": env_id, "name": "x".repeat(70_000),
                       "timestamp": 0, "received_at": 0}]);
    let wrong_type =
        json!([{"id": 1, "env_id": env_id, "name": "x", "timestamp": 0, "received_at": 0}]);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let deep_inside = format!(
        r#"[{{"id":"x","env_id":{env_id},"name":"x","timestamp":0,"received_at":0,"properties":{{"a":{}{}}}}}]"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    )
    .into_bytes();
    let case = |what, body, headers: &[&(&'static str, String)], status, code| BadRequest {
        what,
        body,
        headers: headers.iter().map(|&h| h.clone()).collect(),
        status,
        code,
    };
    let basic = ("authorization", "Basic dXNlcjpwYXNz".to_owned());
    let wrong = ("authorization", "Bearer wrong".to_owned());
    let plain = ("content-type", "text/plain".to_owned());
    let brotli = ("content-encoding", "br".to_owned());
    vec![
        case("no auth", one.clone(), &[&ct], 401, "missing_auth"),
        case(
            "wrong token",
            one.clone(),
            &[&wrong, &ct],
            401,
            "invalid_token",
        ),
        case(
            "basic auth",
            one.clone(),
            &[&basic, &ct],
            401,
            "missing_auth",
        ),
        case(
            "no content type",
            one.clone(),
            &[&auth],
            415,
            "unsupported_content_type",
        ),
        case(
            "text/plain",
            one.clone(),
            &[&auth, &plain],
            415,
            "unsupported_content_type",
        ),
        case(
            "brotli",
            one,
            &[&auth, &ct, &brotli],
            415,
            "unsupported_content_encoding",
        ),
        case(
            "truncated json",
            b"[{\"id\":".to_vec(),
            &[&auth, &ct],
            400,
            "malformed_json",
        ),
        case(
            "not json",
            b"hello".to_vec(),
            &[&auth, &ct],
            400,
            "malformed_json",
        ),
        case(
            "invalid utf-8",
            b"[\"\xff\xfe\"]".to_vec(),
            &[&auth, &ct],
            400,
            "malformed_json",
        ),
        case(
            "object, not array",
            b"{}".to_vec(),
            &[&auth, &ct],
            422,
            "invalid_batch",
        ),
        case(
            "wrong field type",
            js(wrong_type),
            &[&auth, &ct],
            422,
            "invalid_batch",
        ),
        case(
            "10,000-deep array",
            deep,
            &[&auth, &ct],
            422,
            "invalid_batch",
        ),
        case(
            "10,000-deep property",
            deep_inside,
            &[&auth, &ct],
            400,
            "malformed_json",
        ),
        case(
            "empty batch",
            b"[]".to_vec(),
            &[&auth, &ct],
            422,
            "empty_batch",
        ),
        case(
            "too many envelopes",
            js(json!(too_many)),
            &[&auth, &ct],
            413,
            "too_many_envelopes",
        ),
        case(
            "body over the limit",
            js(huge),
            &[&auth, &ct],
            413,
            "body_too_large",
        ),
        case(
            "gzip bomb",
            gzip(&vec![b' '; 10 * 1024 * 1024]),
            &[&auth, &ct, &gzipped],
            413,
            "body_too_large",
        ),
        case(
            "bad gzip",
            b"not gzip at all".to_vec(),
            &[&auth, &ct, &gzipped],
            400,
            "invalid_gzip",
        ),
        case(
            "negative timestamp",
            js(json!([envelope(env_id, &uuid(1), "x", -5)])),
            &[&auth, &ct],
            422,
            "invalid_envelopes",
        ),
        case(
            "control char in name",
            js(json!([envelope(env_id, &uuid(1), "a\u{7}b", 0)])),
            &[&auth, &ct],
            422,
            "invalid_envelopes",
        ),
        case(
            "unknown environment",
            js(json!([
                envelope(env_id, &uuid(1), "x", 0),
                envelope(999_999, &uuid(2), "x", 0)
            ])),
            &[&auth, &ct],
            422,
            "invalid_envelopes",
        ),
    ]
}

/// Envelopes per `POST /v1/ingest` batch of the benchmarks' throughput
/// stage (and rows per INSERT of its raw ceiling).
pub const BENCH_BATCH: usize = 500;
/// The countries of [`bench_envelopes`], by event number (`i % 5`).
pub const BENCH_COUNTRIES: [&str; 5] = ["DE", "US", "FR", "BR", "JP"];
/// The event names [`bench_envelopes`] draws from.
pub const BENCH_NAMES: [&str; 8] = [
    "page_view",
    "click",
    "signup",
    "purchase",
    "search",
    "add_to_cart",
    "checkout",
    "error",
];

/// The envelopes of the benchmarks' throughput stage (`sluice-bench`'s
/// figure 1, `backend/examples/write_path.rs`): ~300-byte events with 5
/// properties, a 3-key context, user and session ids; `n` of one
/// environment from `base` (unix ms), 3 ms apart, the same for a seed.
pub fn bench_envelopes(env_id: u32, base: i64, n: usize, seed: u64) -> Vec<protocol::Envelope> {
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let ts = base + (i as i64) * 3;
            let random: [u8; 10] = rng.random();
            let value = serde_json::json!({
                "id": protocol::uuid_v7(ts as u64, &random),
                "env_id": env_id,
                "name": BENCH_NAMES[rng.random_range(0..BENCH_NAMES.len())],
                "timestamp": ts,
                "received_at": ts + 40,
                "user_id": format!("user-{}", rng.random_range(0..50_000)),
                "session_id": format!("sess-{}", rng.random_range(0..200_000)),
                "properties": {"amount": rng.random_range(1..50_000) as f64 / 100.0, "currency": "EUR",
                               "sku": format!("SKU-{}", rng.random_range(0..5000)), "plan": "pro", "step": i % 10},
                "context": {"country": BENCH_COUNTRIES[i % 5], "colo": "FRA", "library": "sluice-js/1.0"}
            });
            serde_json::from_value(value).expect("valid envelope")
        })
        .collect()
}

/// Event names of the benchmarks' traffic, by event number.
pub fn sample_event_name(i: u64) -> &'static str {
    const NAMES: [&str; 4] = ["page_view", "click", "add_to_cart", "checkout"];
    NAMES[(i % NAMES.len() as u64) as usize]
}

/// One event of the benchmarks' traffic (`make bench`'s direct-ingest stage
/// and `intake/examples/door_cpu.rs`): ~330 bytes of JSON with 5 properties
/// and a small context. `head` opens it with the fields that differ by door
/// (`{"event":…,` for the public API; `{"name":…,"env_id":…,"received_at":…,`
/// for the envelope the door makes of it). `draws` are its random parts, in
/// this order: user (0..50,000), session (0..200,000), cents (1..500),
/// hundredths (0..100), sku (0..5,000).
pub fn sample_event(head: &str, id: &str, ts: i64, i: u64, draws: [u64; 5]) -> String {
    const PLANS: [&str; 3] = ["free", "pro", "team"];
    let [user, session, cents, frac, sku] = draws;
    format!(
        concat!(
            r#"{head}"id":"{id}","timestamp":{ts},"user_id":"user-{user}","#,
            r#""session_id":"sess-{session}","properties":{{"amount":{cents}.{frac:02},"#,
            r#""currency":"EUR","sku":"SKU-{sku}","plan":"{plan}","step":{step}}},"#,
            r#""context":{{"page":{{"path":"/pricing","referrer":"https://www.example.com/"}},"#,
            r#""library":"sluice-js/1.0","locale":"de-DE"}}}}"#
        ),
        head = head,
        id = id,
        ts = ts,
        user = user,
        session = session,
        cents = cents,
        frac = frac,
        sku = sku,
        plan = PLANS[(i % 3) as usize],
        step = i % 10,
    )
}
