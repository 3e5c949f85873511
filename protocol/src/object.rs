//! Structs of the wire format come from JSON objects only. serde's derived
//! `Deserialize` also reads a struct from a sequence of its fields in
//! declaration order (`["id", 1, "name", …]`): a form nobody writes, the
//! description does not list, and that breaks when a field is added. The
//! readers here ask the format for a map and hand it to the derived code, so
//! they cost what the derived reader costs (one pass, nothing buffered).
//!
//! Every struct reached from a body (nested ones by `deserialize_with`) is
//! read through these.

use std::{fmt, marker::PhantomData};

use serde::de::{
    value::MapAccessDeserializer, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor,
};

/// A `T` that was a JSON object (a sequence is refused as the wrong type).
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Object)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(PhantomData))
    }
}

/// A sequence of objects (for `deserialize_with` on a `Vec` field, or a
/// body that is an array of them).
pub fn vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct VecVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for VecVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of JSON objects")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // A hint is the sender's claim: capped like serde's own `Vec` reader.
            let cap = seq
                .size_hint()
                .unwrap_or(0)
                .min((1 << 20) / std::mem::size_of::<T>().max(1));
            let mut out = Vec::with_capacity(cap);
            while let Some(Object(item)) = seq.next_element::<Object<T>>()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(VecVisitor(PhantomData))
}

/// An optional object (for `deserialize_with` on an `Option` field; `null`
/// is `None`).
pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|Object(item)| item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Pair {
        a: u32,
        #[serde(default, deserialize_with = "option")]
        inner: Option<Inner>,
        #[serde(default, deserialize_with = "vec")]
        list: Vec<Inner>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Inner {
        b: u32,
    }

    #[test]
    fn an_object_is_read_as_the_derived_code_reads_it() {
        let Object(pair) = serde_json::from_str::<Object<Pair>>(
            r#"{"a": 1, "inner": {"b": 2}, "list": [{"b": 3}]}"#,
        )
        .unwrap();
        assert_eq!(
            pair,
            Pair {
                a: 1,
                inner: Some(Inner { b: 2 }),
                list: vec![Inner { b: 3 }]
            }
        );
        let Object(bare) =
            serde_json::from_str::<Object<Pair>>(r#"{"a": 1, "inner": null}"#).unwrap();
        assert_eq!((bare.inner, bare.list), (None, vec![]));
        // The derived reader alone takes the sequence form: what these refuse.
        assert!(serde_json::from_str::<Inner>("[2]").is_ok());
    }

    #[test]
    fn the_sequence_form_is_refused_at_every_depth() {
        for text in [
            "[1, null, []]",
            r#"{"a": 1, "inner": [2]}"#,
            r#"{"a": 1, "list": [[3]]}"#,
        ] {
            let error = serde_json::from_str::<Object<Pair>>(text).unwrap_err();
            assert!(error.is_data(), "{text}: {error}");
            assert!(
                error.to_string().contains("expected a JSON object"),
                "{text}: {error}"
            );
        }
        let error = vec::<_, Inner>(&mut serde_json::Deserializer::from_str("[[2]]")).unwrap_err();
        assert!(
            error.to_string().contains("expected a JSON object"),
            "{error}"
        );
        let error =
            vec::<_, Inner>(&mut serde_json::Deserializer::from_str(r#"{"b": 2}"#)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected an array of JSON objects"),
            "{error}"
        );
    }
}
