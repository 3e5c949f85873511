//! One JSON object per log line, for `console.log` and Workers Logs.

use serde_json::{Map, Value};

pub fn line(level: &str, event: &str, fields: Value) -> String {
    let mut object = Map::new();
    object.insert("level".into(), Value::from(level));
    object.insert("event".into(), Value::from(event));
    if let Value::Object(extra) = fields {
        object.extend(extra);
    }
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_follow_level_and_event() {
        let text = super::line("error", "queue_send_failed", serde_json::json!({"lost": 3}));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"level": "error", "event": "queue_send_failed", "lost": 3})
        );
    }
}
