//! Shared harness of the backend integration tests: a real MariaDB/MySQL
//! server (`SLUICE_TEST_MYSQL_URL`, else the private one `scripts/mysql.sh`
//! starts), uniquely named databases per test, dropped at the end.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use backend::{catalog, Config, Server};
use reqwest::header::HeaderMap;
use serde_json::Value;
use sqlx::{mysql::MySqlPool, Row};

pub const TOKEN: &str = "test-ingest-token-0123456789abcdef0123456789";

/// The MySQL server of the tests (testkit: `SLUICE_TEST_MYSQL_URL`, else
/// the private MariaDB of scripts/mysql.sh).
pub fn server_url() -> String {
    testkit::mysql_server()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Env {
    pub server: String,
    pub prefix: String,
    pub catalog: MySqlPool,
    pub catalog_url: String,
}

impl Env {
    pub async fn new() -> Self {
        let server = server_url();
        let prefix = format!(
            "sluice_t{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            rand::random::<u16>()
        );
        let catalog_url = format!("{server}/{prefix}_catalog");
        backend::db::migrate_catalog(&catalog_url)
            .await
            .expect("migrate catalog");
        let catalog = MySqlPool::connect(&catalog_url)
            .await
            .expect("connect catalog");
        Self {
            server,
            prefix,
            catalog,
            catalog_url,
        }
    }

    /// A fresh catalog with shard "a" and one environment on it.
    pub async fn with_environment(name: &str) -> (Self, u32) {
        let t = Self::new().await;
        t.add_shard("a").await;
        let env = catalog::create_environment(&t.catalog, name, "a")
            .await
            .expect("environment");
        (t, env)
    }

    /// Like `with_environment`, plus a read token for it.
    pub async fn with_reader(name: &str) -> (Self, u32, String) {
        let (t, env) = Self::with_environment(name).await;
        let token = catalog::create_read_token(&t.catalog, name)
            .await
            .expect("read token");
        (t, env, token)
    }

    pub fn shard_url(&self, name: &str) -> String {
        format!("{}/{}_{name}", self.server, self.prefix)
    }

    pub async fn add_shard(&self, name: &str) -> u32 {
        catalog::add_shard(&self.catalog, name, &self.shard_url(name))
            .await
            .expect("add shard")
    }

    pub async fn shard_pool(&self, name: &str) -> MySqlPool {
        MySqlPool::connect(&self.shard_url(name))
            .await
            .expect("connect shard")
    }

    pub fn config(&self) -> Config {
        let mut config = Config::new(&self.catalog_url, TOKEN);
        config.shard_timeout_ms = 3000;
        config
    }

    pub async fn start(&self, config: Config) -> (Server, tokio::sync::oneshot::Sender<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = backend::start(config, async {
            let _ = rx.await;
        })
        .await
        .expect("start backend");
        (server, tx)
    }

    pub async fn cleanup(self) {
        let rows = sqlx::query(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?",
        )
        .bind(format!("{}\\_%", self.prefix))
        .fetch_all(&self.catalog)
        .await
        .expect("list databases");
        for row in rows {
            let name: String = row.try_get(0).expect("name");
            // A DROP can lose a metadata-lock deadlock to a connection that
            // is still closing; it is retried, and a last failure says why.
            let drop = format!("DROP DATABASE IF EXISTS `{name}`");
            let mut tries = 0;
            while let Err(error) = sqlx::query(&drop).execute(&self.catalog).await {
                tries += 1;
                assert!(tries < 5, "{drop}: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub async fn stop(server: Server, tx: tokio::sync::oneshot::Sender<()>) {
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(15), server.done)
        .await
        .expect("graceful shutdown in time")
        .expect("server task")
        .expect("server result");
}

#[allow(unused_imports)] // each test file uses part of this module
pub use testkit::{envelope, uuid};

pub async fn post(
    addr: SocketAddr,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value, HeaderMap) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/v1/ingest"))
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, headers)
}

pub async fn ingest(addr: SocketAddr, batch: &Value) -> (u16, Value, HeaderMap) {
    let auth = format!("Bearer {TOKEN}");
    let body = serde_json::to_vec(batch).expect("json");
    post(
        addr,
        body,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
    )
    .await
}

pub async fn count(pool: &MySqlPool, env_id: u32) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE env_id = ?")
        .bind(env_id)
        .fetch_one(pool)
        .await
        .expect("count")
}

pub async fn counted(pool: &MySqlPool, env_id: u32) -> i64 {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(events), 0) AS SIGNED) FROM event_counts_minute WHERE env_id = ?",
    )
    .bind(env_id)
    .fetch_one(pool)
    .await
    .expect("counted")
}

pub async fn metrics(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
