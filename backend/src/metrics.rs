//! Prometheus metrics, served as text at `/metrics`. Labels carry shard
//! and environment names only, never URLs.

use prometheus::{
    core::Collector, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    pub events_inserted: IntCounterVec,
    pub events_duplicate: IntCounterVec,
    pub shard_errors: IntCounterVec,
    pub batch_write_seconds: HistogramVec,
    pub requests: IntCounterVec,
    pub in_flight: IntGauge,
    pub counter_flush_failures: IntCounterVec,
    pub stats_polls: prometheus::IntCounter,
    /// Direct ingest: answers of the public API, by status.
    pub direct_requests: IntCounterVec,
    /// Direct ingest: refusals no environment can be charged with (an unknown
    /// or missing key, an unreadable Segment body), by error code.
    pub direct_unattributed: IntCounterVec,
    /// Direct ingest: refusal reports that could not be written yet (kept
    /// and retried every second).
    pub ledger_report_failures: prometheus::IntCounter,
    /// Database reads by the live tail's pollers.
    pub tail_polls: prometheus::IntCounter,
    /// Direct ingest: events per group-commit write.
    pub group_commit_events: prometheus::Histogram,
    /// Set from the catalog when `/metrics` is read.
    pub catalog_snapshot_age: prometheus::Gauge,
    /// Rows the retention task deleted, per shard and table.
    pub retention_deleted: IntCounterVec,
    /// Retention deletes that failed, per shard (the next pass tries again).
    pub retention_errors: IntCounterVec,
    /// How long one retention pass took.
    pub retention_pass_seconds: prometheus::Histogram,
    /// Dead letters newly recorded in the delivery ledger, per environment.
    pub ledger_dead_letters: IntCounterVec,
    /// Ended suppressions deleted from the catalog.
    pub suppressions_pruned: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut f = Families::default();
        let events_inserted = f.counter(
            "sluice_events_inserted_total",
            "Events inserted, per shard",
            &["shard"],
        );
        let events_duplicate = f.counter(
            "sluice_events_duplicate_total",
            "Envelopes already stored (idempotent repeats), per shard",
            &["shard"],
        );
        let shard_errors = f.counter(
            "sluice_shard_errors_total",
            "Failed shard writes, per shard",
            &["shard"],
        );
        let requests = f.counter(
            "sluice_ingest_requests_total",
            "Ingest requests by response status",
            &["status"],
        );
        let direct_requests = f.counter(
            "sluice_direct_requests_total",
            "Direct ingest: public API requests by response status",
            &["status"],
        );
        let direct_unattributed = f.counter(
            "sluice_direct_unattributed_total",
            "Direct ingest: refused requests without a known environment, by error code",
            &["code"],
        );
        let ledger_report_failures = prometheus::IntCounter::new(
            "sluice_ledger_report_failures_total",
            "Direct ingest: writes of refusal counts to the delivery ledger that failed (retried)",
        )
        .expect("valid counter");
        f.add(&ledger_report_failures);
        let group_commit_events = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sluice_group_commit_events",
                "Direct ingest: events per group-commit write (many requests share one write under load)",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
        )
        .expect("valid histogram");
        f.add(&group_commit_events);
        let counter_flush_failures = f.counter(
            "sluice_counter_flush_failures_total",
            "Counter flushes that failed, per shard",
            &["shard"],
        );
        let batch_write_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_batch_write_seconds",
                "Time to write one environment's batch to one shard",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["shard"],
        )
        .expect("valid histogram");
        f.add(&batch_write_seconds);
        let in_flight = IntGauge::new(
            "sluice_http_requests_in_flight",
            "HTTP requests being served",
        )
        .expect("valid gauge");
        f.add(&in_flight);
        let stats_polls = prometheus::IntCounter::new(
            "sluice_stats_stream_polls_total",
            "Database reads by live-stream pollers (one per environment per second, however many viewers)",
        )
        .expect("valid counter");
        f.add(&stats_polls);
        let tail_polls = prometheus::IntCounter::new(
            "sluice_tail_polls_total",
            "Polls by live-tail pollers (one per environment every 500 ms, however many viewers)",
        )
        .expect("valid counter");
        f.add(&tail_polls);
        let catalog_snapshot_age = prometheus::Gauge::new(
            "sluice_catalog_snapshot_age_seconds",
            "Age of the catalog snapshot writes route with (above SLUICE_CATALOG_REFRESH_MS: the catalog cannot be read)",
        )
        .expect("valid gauge");
        f.add(&catalog_snapshot_age);
        let retention_deleted = f.counter(
            "sluice_retention_deleted_total",
            "Rows deleted by the retention task, per shard and table",
            &["shard", "table"],
        );
        let retention_errors = f.counter(
            "sluice_retention_errors_total",
            "Retention deletes that failed, per shard (the next pass tries again)",
            &["shard"],
        );
        let ledger_dead_letters = f.counter(
            "sluice_ledger_dead_letters_total",
            "Dead-lettered events newly recorded in the delivery ledger, per environment (each once, however often reported)",
            &["env"],
        );
        let retention_pass_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sluice_retention_pass_seconds",
                "Time of one retention pass over every environment with a retention",
            )
            .buckets(vec![0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0]),
        )
        .expect("valid histogram");
        f.add(&retention_pass_seconds);
        let suppressions_pruned = prometheus::IntCounter::new(
            "sluice_suppressions_pruned_total",
            "Ended suppressions (of erased people) deleted from the catalog; the erasure records stay",
        )
        .expect("valid counter");
        f.add(&suppressions_pruned);
        Self {
            registry: f.registry,
            names: f.names,
            ledger_dead_letters,
            retention_deleted,
            retention_errors,
            retention_pass_seconds,
            suppressions_pruned,
            direct_requests,
            direct_unattributed,
            ledger_report_failures,
            group_commit_events,
            catalog_snapshot_age,
            stats_polls,
            tail_polls,
            events_inserted,
            events_duplicate,
            shard_errors,
            batch_write_seconds,
            requests,
            in_flight,
            counter_flush_failures,
        }
    }

    /// Every metric family's name, whether or not it has a sample yet (the
    /// operator's kit in deploy/ is checked against these).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The registry being filled, and the names registered in it.
#[derive(Default)]
struct Families {
    registry: Registry,
    names: Vec<String>,
}

impl Families {
    fn add<C: Collector + Clone + 'static>(&mut self, c: &C) {
        self.names
            .extend(c.desc().iter().map(|d| d.fq_name.clone()));
        self.registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(&c);
        c
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `sluice_…` names in a text: metric families, and the `_bucket` /
    /// `_sum` / `_count` series of histograms.
    fn metric_names(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("sluice_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
        out
    }

    fn kit(file: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The operator's kit (deploy/) names only metrics the backend exports,
    /// and the dashboard shows every one of them: a renamed metric breaks
    /// this test, a new one asks for its panel.
    #[test]
    fn the_dashboard_and_alerts_use_exactly_the_exported_metrics() {
        let metrics = Metrics::new();
        let exported: BTreeSet<String> = metrics.names().iter().cloned().collect();
        assert!(exported.contains("sluice_ledger_dead_letters_total"));
        let family = |name: &str| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|base| exported.contains(*base)))
                .unwrap_or(name)
                .to_string()
        };
        let dashboard = kit("grafana/sluice-backend.json");
        let on_dashboard: BTreeSet<String> =
            metric_names(&dashboard).iter().map(|n| family(n)).collect();
        for file in [
            "grafana/sluice-backend.json",
            "prometheus/alerts.yml",
            "prometheus/alerts.test.yml",
        ] {
            for name in metric_names(&kit(file)) {
                assert!(
                    exported.contains(&family(&name)),
                    "deploy/{file} names {name}, which the backend does not export"
                );
            }
        }
        let missing: Vec<_> = exported.difference(&on_dashboard).collect();
        assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
    }

    #[test]
    fn names_lists_every_family_before_it_has_a_sample() {
        let metrics = Metrics::new();
        assert!(!metrics.render().contains("sluice_shard_errors_total"));
        assert!(metrics
            .names()
            .iter()
            .any(|n| n == "sluice_shard_errors_total"));
        let unique: BTreeSet<_> = metrics.names().iter().collect();
        assert_eq!(unique.len(), metrics.names().len());
    }
}
