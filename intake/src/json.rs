//! The one JSON parser for request bodies (`/v1/events` and the Segment API).
//!
//! Like `serde_json::from_slice::<Value>`, in one pass and with serde_json's
//! own recursion limit, except that an object holding the same key twice (at
//! any depth) is refused instead of letting the last one win: two readers of
//! such a body may disagree on what it says. The backend's `/v1/ingest` reads
//! envelopes the edge wrote itself and keeps serde_json's behaviour.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use crate::Error;

/// At most this many characters of a repeated key go into the error.
const MAX_KEY_IN_ERROR: usize = 64;

/// A request body as a JSON value; `invalid_json` for malformed text,
/// trailing characters, too deep nesting, or a repeated key in any object.
pub fn parse(body: &[u8]) -> Result<Value, Error> {
    let invalid = |e: serde_json::Error| Error::InvalidJson(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Strict.deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(value)
}

/// The length of `value` as compact JSON text (`serde_json::to_vec(value)`'s
/// length), counted as serde_json writes it, without building the text.
pub fn compact_len(value: &Value) -> Result<usize, serde_json::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0 += buf.len();
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    Ok(count.0)
}

/// Builds a [`Value`] as serde_json's own visitor does, refusing repeated keys.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            match map.entry(key) {
                Entry::Occupied(seen) => {
                    let key: String = seen.key().chars().take(MAX_KEY_IN_ERROR).collect();
                    let more = if seen.key().chars().count() > MAX_KEY_IN_ERROR {
                        "…"
                    } else {
                        ""
                    };
                    return Err(de::Error::custom(format_args!(
                        "duplicate key `{key}{more}` in an object"
                    )));
                }
                Entry::Vacant(slot) => {
                    slot.insert(access.next_value_seed(Strict)?);
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invalid(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(Error::InvalidJson(message)) => message,
            other => panic!("{body}: expected invalid_json, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for (body, key) in [
            (r#"{"event":"a","event":"b"}"#, "event"),
            (r#"{"batch":[],"batch":[{"event":"a"}]}"#, "batch"),
            (
                r#"[{"event":"a"},{"event":"b","properties":{"x":1,"x":2}}]"#,
                "x",
            ),
            (
                r#"{"event":"a","context":{"page":{"url":"u","url":"v"}}}"#,
                "url",
            ),
            (r#"{"a":[[{"deep":{"k":1,"k":1}}]]}"#, "k"),
            (r#"{"t":{"":1,"":2}}"#, ""),
            // The same key, spelled with an escape, is still the same key.
            (r#"{"event":"a","\u0065vent":"b"}"#, "event"),
        ] {
            let message = invalid(body);
            assert!(
                message.contains(&format!("duplicate key `{key}`")),
                "{body}: {message}"
            );
        }
    }

    #[test]
    fn a_key_once_per_object_is_fine() {
        let v = parse(br#"{"a":{"k":1},"b":{"k":2},"c":[{"k":3},{"k":4}]}"#).unwrap();
        assert_eq!(v, json!({"a":{"k":1},"b":{"k":2},"c":[{"k":3},{"k":4}]}));
    }

    #[test]
    fn builds_the_same_values_as_serde_json() {
        let text = r#"{"s":"\u00e9\ud83d\ude00","n":null,"t":true,"f":false,"i":-5,
            "u":18446744073709551615,"x":1.5e300,"e":[],"o":{},
            "nested":[1,[2,[3,{"k":"v"}]]],"neg0":-0.0,"float":0.1}"#;
        let ours = parse(text.as_bytes()).unwrap();
        let theirs: Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.to_string(), theirs.to_string());
    }

    #[test]
    fn malformed_text_is_still_invalid_json() {
        for body in ["", "{", "[1,]", r#"{"a":1} x"#, "NaN", "{\"a\":\"\\x\"}"] {
            invalid(body);
        }
        // Deep nesting stops at serde_json's recursion limit, no stack overflow.
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(invalid(&deep).contains("recursion limit"));
        let deep = "{\"a\":".repeat(10_000) + "1" + &"}".repeat(10_000);
        assert!(invalid(&deep).contains("recursion limit"));
    }

    #[test]
    fn compact_len_is_the_length_of_the_compact_text() {
        let text = r#"{"s":"\u00e9\ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t \u0001\u001f\u007f","n":null,
            "t":true,"f":false,"i":-5,"u":18446744073709551615,"big":18446744073709551616,
            "x":1.5e300,"tiny":5e-324,"e":[],"o":{},"neg0":-0,"negf":-0.0,"one":1e2,"k":1e15,
            "nested":[1,[2,[3,{"k":"v","":""}]]],"float":0.1,"\u0000key":"\u2028\u2029"}"#;
        let mut values: Vec<Value> = vec![parse(text.as_bytes()).unwrap()];
        values.extend([
            json!(null),
            json!("x"),
            json!(1.0),
            json!([]),
            json!({"a": [1, 2.5, "é"]}),
        ]);
        for value in values {
            let text = serde_json::to_vec(&value).unwrap();
            assert_eq!(compact_len(&value).unwrap(), text.len(), "{value}");
        }
    }

    #[test]
    fn a_long_duplicate_key_is_named_in_short() {
        let key = "k".repeat(10_000);
        let message = invalid(&format!(r#"{{"{key}":1,"{key}":2}}"#));
        assert!(message.len() < 300, "{}", message.len());
        assert!(message.contains("duplicate key `kkk"), "{message}");
    }
}
