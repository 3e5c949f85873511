//! The edge worker's request path, natively: key extraction, body decoding,
//! `/v1/events` parsing and enrichment, and the Segment-compatible API.
//!
//! Input: `[mode, aux, header_len, header.., body..]`
//! - mode bits 0-1: 0/1 `/v1/events`, 2 a single Segment message, 3 a Segment batch
//! - mode bits 2-3: Content-Encoding: none, `identity`, `gzip` (body taken as
//!   gzip as is), `x-gzip` (body gzipped here first, so valid gzip gets through)
//! - mode bit 4: the request has country/colo/user agent/ip
//! - aux bits 0-2: the Segment message type; bits 3-4: the receive time
//! - header: the `Authorization` header (and `?key=` for `/v1/events`)
//!
//! Properties: nothing panics; every accepted key is short printable ASCII;
//! decoded bodies respect the cap; every envelope `build` returns passes
//! `Envelope::validate()`, serializes to JSON that reads back equal, and
//! survives the queue packing (`pack::messages` → `forward::decode`).

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use protocol::{Envelope, EventType, MAX_TIMESTAMP_MS};
use intake::credentials::{self, MAX_KEY_LEN};
use intake::events::{self as ingest, Meta};
use intake::segment::{self, Endpoint};
use intake::Limits;
use sluice_edge::{forward, pack};

const RECEIVED_AT: [i64; 4] = [1_700_000_000_000, 0, MAX_TIMESTAMP_MS, 1];

fn check_key(key: &str) {
    assert!(!key.is_empty(), "empty key accepted");
    assert!(key.len() <= MAX_KEY_LEN, "long key accepted");
    assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key:?}");
}

fn check_envelopes(envelopes: &[Envelope], meta: &Meta) {
    for envelope in envelopes {
        if let Err(e) = envelope.validate() {
            panic!("build returned an invalid envelope ({e}): {envelope:?}");
        }
        assert_eq!(envelope.env_id, meta.env_id);
        assert_eq!(envelope.received_at, meta.received_at);
        let text = serde_json::to_string(envelope).expect("an envelope serializes");
        let back: Envelope = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("envelope JSON does not read back ({e}): {text}"));
        assert_eq!(&back, envelope, "envelope JSON does not round-trip: {text}");
    }
    let messages = pack::messages(envelopes).expect("envelopes pack");
    assert_eq!(
        messages.iter().map(|m| m.envelopes).sum::<usize>(),
        envelopes.len()
    );
    let mut unpacked = Vec::with_capacity(envelopes.len());
    for message in &messages {
        let decoded = forward::decode(&message.body)
            .unwrap_or_else(|e| panic!("a queued message does not decode: {e}"));
        assert_eq!(decoded.len(), message.envelopes);
        unpacked.extend(decoded);
    }
    assert_eq!(unpacked, envelopes, "queue packing changed the envelopes");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let [mode, aux, header_len, rest @ ..] = data else {
        return;
    };
    let header_len = usize::from(*header_len).min(rest.len());
    let (header, body) = rest.split_at(header_len);
    let header = String::from_utf8_lossy(header);
    let authorization = (!header.is_empty()).then_some(header.as_ref());

    let (encoding, raw) = match (mode >> 2) & 3 {
        0 => (None, body.to_vec()),
        1 => (Some("identity"), body.to_vec()),
        2 => (Some("gzip"), body.to_vec()),
        _ => (Some(" X-GZIP "), gzip(body)),
    };
    let enriched = mode & 0x10 != 0;
    let meta = Meta {
        env_id: 7,
        received_at: RECEIVED_AT[usize::from((aux >> 3) & 3)],
        country: enriched.then(|| "DE".to_owned()),
        colo: enriched.then(|| "FRA".to_owned()),
        user_agent: enriched.then(|| "fuzz-agent/1".to_owned()),
        ip: enriched.then(|| "192.0.2.1".to_owned()),
    };
    let mut counter = 0u8;
    let random = || {
        counter = counter.wrapping_add(1);
        [counter; 10]
    };

    match mode & 3 {
        0 | 1 => {
            if let Ok(key) = credentials::extract_key(authorization, None) {
                check_key(&key);
            }
            if let Ok(key) = credentials::extract_key(None, Some(header.as_ref())) {
                check_key(&key);
            }
            let limits = Limits::default();
            let Ok(decoded) = ingest::decode_body(raw, encoding, limits.max_body_bytes) else {
                return;
            };
            assert!(decoded.len() <= limits.max_body_bytes);
            let Ok(payload) = ingest::parse(&decoded, &limits) else {
                return;
            };
            assert!(!payload.events.is_empty() && payload.events.len() <= limits.max_events);
            let events = payload.events.len();
            if let Ok(envelopes) = ingest::build(payload, &meta, random) {
                assert_eq!(envelopes.len(), events, "all or nothing");
                check_envelopes(&envelopes, &meta);
            }
        }
        route => {
            let endpoint = if route == 2 {
                Endpoint::Single(EventType::ALL[usize::from(aux & 7) % EventType::ALL.len()])
            } else {
                Endpoint::Batch
            };
            let Ok(decoded) = ingest::decode_body(raw, encoding, segment::MAX_REQUEST_BYTES) else {
                return;
            };
            assert!(decoded.len() <= segment::MAX_REQUEST_BYTES);
            let Ok(request) = segment::parse(&decoded, endpoint) else {
                return;
            };
            if let Ok(key) = segment::write_key(authorization, request.write_key.as_deref()) {
                check_key(&key);
            }
            let messages = request.messages.len();
            if let Ok(outcome) = segment::build(request, &meta, random) {
                assert!(!outcome.envelopes.is_empty());
                assert_eq!(outcome.envelopes.len() + outcome.rejected_count, messages);
                assert!(outcome.rejected.len() <= outcome.rejected_count);
                assert!(outcome.rejected.len() <= segment::MAX_REJECTED_DETAILS);
                check_envelopes(&outcome.envelopes, &meta);
                let _ = outcome.body();
            }
        }
    }
});
