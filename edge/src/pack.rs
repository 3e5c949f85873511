//! Envelopes → queue messages (each a JSON array of envelopes, as text) →
//! `sendBatch` calls, inside the Cloudflare Queues limits.

use protocol::Envelope;

/// Queues accepts 128 KB per message; we keep headroom for its own framing.
pub const MAX_MESSAGE_BYTES: usize = 120_000;
/// `sendBatch` takes at most 100 messages and 256 KB in total.
pub const MAX_BATCH_MESSAGES: usize = 100;
pub const MAX_BATCH_BYTES: usize = 240_000;
/// Per-message allowance for what Queues adds in a batch (ids, content type).
pub const MESSAGE_OVERHEAD_BYTES: usize = 100;

/// One queue message: a JSON array of envelopes, and how many it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub body: String,
    pub envelopes: usize,
}

/// A JSON array written element by element (the text of a queue message or
/// of a backend request): the one greedy packer under a byte cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonArray {
    text: String,
    len: usize,
}

impl Default for JsonArray {
    fn default() -> Self {
        Self {
            text: String::from("["),
            len: 0,
        }
    }
}

impl JsonArray {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `element` (JSON text) can join and the closed array stay
    /// within `max_bytes`. An empty array takes any element: one too large
    /// to fit anywhere still gets an array of its own.
    pub fn fits(&self, element: &str, max_bytes: usize) -> bool {
        // The text so far, a comma, the element and the closing bracket.
        let closed = self.text.len() + 1 + element.len() + 1;
        self.is_empty() || closed <= max_bytes
    }

    pub fn push(&mut self, element: &str) {
        if !self.is_empty() {
            self.text.push(',');
        }
        self.text.push_str(element);
        self.len += 1;
    }

    /// The closed array's text.
    pub fn finish(mut self) -> String {
        self.text.push(']');
        self.text
    }
}

/// Packs envelopes greedily into JSON-array texts of at most
/// [`MAX_MESSAGE_BYTES`]. An envelope that cannot fit even alone (impossible
/// under the edge's 32 KiB event limit) still gets a message of its own.
pub fn messages(envelopes: &[Envelope]) -> Result<Vec<Message>, serde_json::Error> {
    let mut out = Vec::new();
    let mut current = JsonArray::default();
    let close = |array: JsonArray| Message {
        envelopes: array.len(),
        body: array.finish(),
    };
    for envelope in envelopes {
        let text = serde_json::to_string(envelope)?;
        if !current.fits(&text, MAX_MESSAGE_BYTES) {
            out.push(close(std::mem::take(&mut current)));
        }
        current.push(&text);
    }
    if !current.is_empty() {
        out.push(close(current));
    }
    Ok(out)
}

/// Groups messages into `sendBatch` calls within the count and byte limits.
pub fn batches(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut out: Vec<Vec<Message>> = Vec::new();
    let mut bytes = 0;
    for message in messages {
        let size = message.body.len() + MESSAGE_OVERHEAD_BYTES;
        let start_new = match out.last() {
            None => true,
            Some(batch) => batch.len() >= MAX_BATCH_MESSAGES || bytes + size > MAX_BATCH_BYTES,
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(batch) = out.last_mut() {
            batch.push(message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_array_fits_exactly_to_its_cap_and_always_takes_a_first_element() {
        let mut array = JsonArray::default();
        assert!(
            array.fits(&"x".repeat(100), 10),
            "the first element always fits"
        );
        array.push("1");
        assert!(array.fits("23", 6), "[1,23] is 6 bytes");
        assert!(!array.fits("234", 6));
        array.push("23");
        assert_eq!((array.len(), array.finish()), (2, "[1,23]".to_owned()));
        assert_eq!(JsonArray::default().finish(), "[]");
    }
    use serde_json::{json, Map, Value};

    fn envelope(i: usize, blob: usize) -> Envelope {
        let mut properties = Map::new();
        properties.insert("blob".into(), Value::String("x".repeat(blob)));
        Envelope {
            id: format!("id-{i}"),
            env_id: 1,
            name: "e".into(),
            timestamp: 1,
            received_at: 1,
            user_id: None,
            anonymous_id: None,
            session_id: None,
            properties,
            context: Map::new(),
            ..Envelope::default()
        }
    }

    fn decode(message: &Message) -> Vec<Envelope> {
        let envelopes: Vec<Envelope> = serde_json::from_str(&message.body).unwrap();
        assert_eq!(envelopes.len(), message.envelopes);
        envelopes
    }

    fn text(body: String) -> Message {
        Message { body, envelopes: 1 }
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert!(messages(&[]).unwrap().is_empty());
        assert!(batches(vec![]).is_empty());
    }

    #[test]
    fn small_envelopes_share_one_message() {
        let envs: Vec<Envelope> = (0..10).map(|i| envelope(i, 10)).collect();
        let msgs = messages(&envs).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(decode(&msgs[0]), envs);
    }

    #[test]
    fn messages_stay_under_the_limit_and_keep_every_envelope_in_order() {
        // 1000 envelopes of ~1 KiB: about 1 MiB, the most one request can carry.
        let envs: Vec<Envelope> = (0..1000).map(|i| envelope(i, 1000)).collect();
        let msgs = messages(&envs).unwrap();
        assert!(msgs.len() >= 9, "{} messages", msgs.len());
        for m in &msgs {
            assert!(m.body.len() <= MAX_MESSAGE_BYTES, "{}", m.body.len());
        }
        let back: Vec<Envelope> = msgs.iter().flat_map(decode).collect();
        assert_eq!(back, envs);
    }

    #[test]
    fn a_message_is_filled_up_to_the_limit() {
        let one = serde_json::to_string(&envelope(0, 1000)).unwrap().len();
        let per_message = (MAX_MESSAGE_BYTES - 2) / (one + 1);
        let envs: Vec<Envelope> = (0..per_message + 1)
            .map(|i| envelope(i % 10, 1000))
            .collect();
        let msgs = messages(&envs).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(decode(&msgs[0]).len(), per_message);
    }

    #[test]
    fn an_oversized_envelope_travels_alone() {
        let envs = vec![
            envelope(0, 10),
            envelope(1, MAX_MESSAGE_BYTES),
            envelope(2, 10),
        ];
        let msgs = messages(&envs).unwrap();
        assert_eq!(msgs.len(), 3);
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let small: Vec<Message> = (0..250).map(|_| text(json!([]).to_string())).collect();
        let b = batches(small);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 50]);

        let big: Vec<Message> = (0..5)
            .map(|_| text("x".repeat(MAX_MESSAGE_BYTES)))
            .collect();
        let b = batches(big);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1, 1, 1]);

        let half: Vec<Message> = (0..5).map(|_| text("x".repeat(100_000))).collect();
        let b = batches(half);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        for batch in &b {
            let total: usize = batch
                .iter()
                .map(|m| m.body.len() + MESSAGE_OVERHEAD_BYTES)
                .sum();
            assert!(total <= MAX_BATCH_BYTES);
        }
    }
}
