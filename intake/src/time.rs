//! Times in requests: the one parser of "RFC 3339 or epoch milliseconds".

use chrono::DateTime;
use serde_json::Value;

/// Epoch milliseconds from text: a string of ASCII digits, or RFC 3339
/// (`2026-12-01T10:00:00Z`, any offset). Not range-checked (callers refuse
/// what `protocol::timestamp_in_range` does not accept with their own reason).
pub fn parse_text(text: &str) -> Option<i64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Epoch milliseconds from a JSON value: a number (a fraction is dropped),
/// or text as [`parse_text`] reads it.
pub fn parse_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => parse_text(s),
        _ => None,
    }
}

/// [`parse_text`], then within `protocol::timestamp_in_range`: what a query
/// parameter or a command-line argument may say.
pub fn parse_in_range(text: &str) -> Option<i64> {
    parse_text(text).filter(|&ms| protocol::timestamp_in_range(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digits_or_rfc_3339() {
        assert_eq!(parse_text("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_text("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(
            parse_text("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500)
        );
        assert_eq!(parse_text("-5"), None, "no sign");
        assert_eq!(parse_text(""), None);
        assert_eq!(parse_text("yesterday"), None);
        assert_eq!(parse_text("99999999999999999999"), None, "overflow");
    }

    #[test]
    fn json_numbers_and_strings() {
        assert_eq!(
            parse_value(&json!(1_700_000_000_000i64)),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_value(&json!(1_700_000_000_000.7)),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_value(&json!("1700000000000")),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_value(&json!(1e300)), None);
        assert_eq!(parse_value(&json!(f64::MAX)), None);
        assert_eq!(
            parse_value(&json!("2023-11-14 22:13:20")),
            None,
            "RFC 3339 needs the T"
        );
        assert_eq!(parse_value(&json!(true)), None);
        assert_eq!(parse_value(&json!({})), None);
        assert_eq!(parse_value(&json!(null)), None);
        assert_eq!(parse_value(&json!([1])), None);
    }

    #[test]
    fn in_range_refuses_negatives_and_the_far_future() {
        assert_eq!(parse_in_range("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_in_range("1969-12-31T23:59:59Z"), None);
        let past_the_max = (protocol::MAX_TIMESTAMP_MS + 1).to_string();
        assert_eq!(parse_in_range(&past_the_max), None);
    }
}
