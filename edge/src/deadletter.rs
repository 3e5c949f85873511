//! Dead letters: what the consumer sends to the dead-letter queue, and the
//! record the DLQ consumer keeps in KV for an operator to inspect and replay.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// KV key prefix of stored dead letters; keys sort by arrival time.
pub const KEY_PREFIX: &str = "dlq/";

/// KV key prefix of each environment's retention record (its days, as
/// text), in the same namespace as the letters.
pub const RETENTION_PREFIX: &str = "retention/";

/// Where an environment's retention record lives.
pub fn retention_key(env_id: u32) -> String {
    format!("{RETENTION_PREFIX}{env_id}")
}

/// The environments a stored body's events belong to (none when it is
/// neither envelopes nor reports).
pub fn env_ids(body: &str) -> std::collections::BTreeSet<u32> {
    ledger_reports(body)
        .map(|r| {
            let letters = r.dead_letters.iter().map(|d| d.env_id);
            letters.chain(r.reports.iter().map(|r| r.env_id)).collect()
        })
        .unwrap_or_default()
}

/// A letter's KV `expirationTtl`: the shortest retention of its
/// environments (a letter outlives none of them), none when none has one.
pub fn ttl_seconds(retention_days: impl IntoIterator<Item = Option<u32>>) -> Option<u64> {
    retention_days
        .into_iter()
        .flatten()
        .min()
        .map(|days| u64::from(days.max(1)) * 86_400)
}

/// Longest reason kept with a dead letter.
pub const MAX_REASON_CHARS: usize = 300;

/// The body the consumer sends to the DLQ for a poison message. A body that
/// is JSON travels embedded as is (`body_json`): escaping it as a string could
/// push a full 120 KB message over the 128 KB limit.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poison {
    pub reason: String,
    pub source_queue: String,
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_json: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// What the DLQ consumer stores per message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub stored_at: i64,
    pub dlq_message_id: String,
    pub reason: String,
    pub source_queue: Option<String>,
    pub source_message_id: Option<String>,
    pub attempts: u32,
    /// The original message body: a JSON array of envelopes when it was ours.
    pub body: String,
}

pub fn poison_message(reason: &str, source_queue: &str, message_id: &str, body: &str) -> String {
    let body_json = serde_json::from_str::<Box<RawValue>>(body).ok();
    let poison = Poison {
        reason: reason.chars().take(MAX_REASON_CHARS).collect(),
        source_queue: source_queue.to_owned(),
        message_id: message_id.to_owned(),
        body: body_json.is_none().then(|| body.to_owned()),
        body_json,
    };
    serde_json::to_string(&poison).unwrap_or_else(|_| body.to_owned())
}

/// A DLQ message is either a [`Poison`] we sent, or a message the queue moved
/// here after `max_retries` failed deliveries.
pub fn record(dlq_message_id: &str, attempts: u32, stored_at: i64, body: &str) -> Record {
    match serde_json::from_str::<Poison>(body) {
        Ok(p) => Record {
            stored_at,
            dlq_message_id: dlq_message_id.to_owned(),
            reason: p.reason,
            source_queue: Some(p.source_queue),
            source_message_id: Some(p.message_id),
            attempts,
            body: p
                .body_json
                .map(|raw| raw.get().to_owned())
                .or(p.body)
                .unwrap_or_default(),
        },
        Err(_) => Record {
            stored_at,
            dlq_message_id: dlq_message_id.to_owned(),
            reason: "delivery retries exhausted".to_owned(),
            source_queue: None,
            source_message_id: None,
            attempts,
            body: body.to_owned(),
        },
    }
}

pub fn storage_key(record: &Record) -> String {
    format!(
        "{KEY_PREFIX}{:013}/{}",
        record.stored_at.max(0),
        record.dlq_message_id
    )
}

/// What the delivery ledger is told of a dead letter's original body: its
/// envelopes (read leniently: `env_id`, `id`, `received_at`, `acceptance`)
/// as `dead_letters`, or, for a report message, its reports. `None` for
/// anything else (nothing to count it by).
pub fn ledger_reports(body: &str) -> Option<protocol::Reports> {
    if crate::report::is_reports(body) {
        return crate::forward::decode_reports(body).ok();
    }
    let dead_letters: Vec<protocol::DeadLetter> = serde_json::from_str(body).ok()?;
    (!dead_letters.is_empty()).then_some(protocol::Reports {
        reports: Vec::new(),
        dead_letters,
    })
}

/// Text of a message body that is not a string (a producer that sent JSON).
pub fn body_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_round_trips_into_a_record() {
        let text = poison_message("backend answered 422", "sluice-events", "m1", "[1,2]");
        let r = record("d1", 1, 1_700_000_000_000, &text);
        assert_eq!(r.reason, "backend answered 422");
        assert_eq!(r.source_queue.as_deref(), Some("sluice-events"));
        assert_eq!(r.source_message_id.as_deref(), Some("m1"));
        assert_eq!(r.body, "[1,2]");
        assert_eq!(storage_key(&r), "dlq/1700000000000/d1");
        assert!(
            text.contains(r#""body_json":[1,2]"#),
            "JSON travels unescaped: {text}"
        );

        let text = poison_message(&"r".repeat(1000), "q", "m2", "not json \"at all");
        let r = record("d3", 1, 0, &text);
        assert_eq!(r.body, "not json \"at all");
        assert_eq!(r.reason.len(), MAX_REASON_CHARS);
    }

    #[test]
    fn a_full_message_still_fits_once_wrapped() {
        let envelopes: Vec<String> = (0..400)
            .map(|i| format!(r#"{{"id":"{i}","name":"e\"q"}}"#))
            .collect();
        let body = format!("[{}]", envelopes.join(","));
        let text = poison_message("why", "sluice-events", "m", &body);
        assert!(text.len() <= body.len() + 500);
    }

    #[test]
    fn exhausted_messages_are_kept_verbatim() {
        let r = record("d2", 3, 5, r#"[{"id":"x"}]"#);
        assert_eq!(r.reason, "delivery retries exhausted");
        assert_eq!(r.body, r#"[{"id":"x"}]"#);
        assert_eq!(storage_key(&r), "dlq/0000000000005/d2");
    }

    #[test]
    fn the_ledger_counts_envelopes_and_reports_of_a_dead_letter_and_nothing_else() {
        let envelopes = r#"[{"id":"a","env_id":3,"name":"e","timestamp":1,"received_at":1700000000000,
            "acceptance":{"id":"0123456789abcdef0123456789abcdef","n":1}}]"#;
        let reports = ledger_reports(envelopes).expect("envelopes count");
        assert_eq!(reports.dead_letters.len(), 1);
        assert_eq!(
            (
                reports.dead_letters[0].env_id,
                reports.dead_letters[0].id.as_str()
            ),
            (3, "a")
        );
        assert_eq!(
            reports.dead_letters[0].acceptance.as_ref().map(|a| a.n),
            Some(1)
        );

        let report = r#"{"reports":[{"id":"r1","env_id":3,"received_at":1700000000000,"rejected":{"invalid_json":1}}]}"#;
        assert_eq!(
            ledger_reports(report)
                .expect("a report message")
                .reports
                .len(),
            1
        );

        for junk in [
            "not json",
            "[]",
            "[1]",
            r#"[{"id":"x"}]"#,
            "{}",
            r#"{"reports":[{"id":""}]}"#,
        ] {
            assert!(ledger_reports(junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn non_string_bodies_become_json_text() {
        assert_eq!(body_text(&Value::String("a".into())), "a");
        assert_eq!(body_text(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }
}
