//! The backend's `POST /v1/ingest` body decoding: `api::gunzip` and
//! `api::decode_batch`, with the default limits (8 MiB, 20 000 envelopes)
//! or tiny ones.
//!
//! Input: `[mode, body..]`
//! - mode bits 0-1: 0/1 the body is JSON, 2 the body is taken as gzip as is,
//!   3 the body is gzipped here first (so valid gzip gets through)
//! - mode bit 2: tiny limits (`max_events` 1-4 from bits 3-4, 4 KiB body)
//!
//! A raw body over the limit is skipped, as `read_body` refuses it first.
//!
//! Properties: nothing panics; an inflated body respects the cap; every
//! decoded envelope passes `Envelope::validate()` and its JSON reads back equal.

#![no_main]

use std::io::Write;

use backend::api::{decode_batch, gunzip};
use libfuzzer_sys::fuzz_target;
use protocol::Envelope;

const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const MAX_BATCH_EVENTS: usize = 20_000;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let [mode, body @ ..] = data else {
        return;
    };
    let (limit, max_events) = if mode & 4 != 0 {
        (4096, 1 + usize::from((mode >> 3) & 3))
    } else {
        (MAX_BODY_BYTES, MAX_BATCH_EVENTS)
    };
    // `read_body` refuses a raw body over the limit before anything here runs.
    if mode & 3 != 3 && body.len() > limit {
        return;
    }
    let inflated;
    let bytes: &[u8] = match mode & 3 {
        0 | 1 => body,
        2 => match gunzip(body, limit) {
            Ok(out) => {
                inflated = out;
                &inflated
            }
            Err(_) => return,
        },
        _ => {
            let out = gunzip(&gzip(body), limit);
            match out {
                Ok(out) => {
                    assert_eq!(out, body, "gzip round trip");
                    inflated = out;
                    &inflated
                }
                Err(_) => {
                    assert!(body.len() > limit, "valid gzip under the cap refused");
                    return;
                }
            }
        }
    };
    assert!(bytes.len() <= limit, "inflated past the cap");
    let Ok(envelopes) = decode_batch(bytes, max_events) else {
        return;
    };
    assert!(!envelopes.is_empty() && envelopes.len() <= max_events);
    for envelope in &envelopes {
        if let Err(e) = envelope.validate() {
            panic!("decode_batch returned an invalid envelope ({e}): {envelope:?}");
        }
        let text = serde_json::to_string(envelope).expect("an envelope serializes");
        let back: Envelope = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("envelope JSON does not read back ({e}): {text}"));
        assert_eq!(&back, envelope, "envelope JSON does not round-trip: {text}");
    }
});
