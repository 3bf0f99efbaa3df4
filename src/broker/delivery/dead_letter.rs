//! Dead letters: a record that a share group gave up on, copied to the
//! group's dead-letter topic with its original key, value, timestamp and
//! headers plus `dlq.*` headers that say where it came from and why; and
//! the way back (`RedriveDeadLetters`): the original record, `dlq.*`
//! headers removed, for its original topic and partition.

use bytes::Bytes;

use crate::storage::batch::{Record, StoredRecord};

/// The headers a dead letter carries, in the order they are added.
pub const HEADERS: [&str; 6] =
    ["dlq.topic", "dlq.partition", "dlq.offset", "dlq.group", "dlq.deliveries", "dlq.reason"];

/// Where a dead letter came from, read back from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// The dead letter of `source` (from `topic`/`partition`) for `group`:
/// the source record as it was, plus the `dlq.*` headers. Headers named
/// `dlq.*` that the source already had (it was a dead letter once) are
/// replaced, so the newest origin is the one that counts.
pub fn dead_letter(
    source: &StoredRecord,
    topic: &str,
    partition: u32,
    group: &str,
    deliveries: u32,
    reason: &str,
) -> Record {
    let mut headers: Vec<(String, Bytes)> =
        source.headers.iter().filter(|(k, _)| !HEADERS.contains(&k.as_str())).cloned().collect();
    let values = [
        topic.to_string(),
        partition.to_string(),
        source.offset.to_string(),
        group.to_string(),
        deliveries.to_string(),
        reason.to_string(),
    ];
    headers.extend(HEADERS.iter().zip(values).map(|(k, v)| (k.to_string(), Bytes::from(v))));
    Record { key: source.key.clone(), value: source.value.clone(), headers, timestamp_ms: source.timestamp_ms }
}

/// A dead letter's origin and the original record (its `dlq.*` headers
/// removed), or `None` if it lacks a readable `dlq.topic`, `dlq.partition`
/// or `dlq.offset` (a record some client wrote to the dead-letter topic).
pub fn redrive(dead: &StoredRecord) -> Option<(Origin, Record)> {
    let header = |name: &str| {
        let (_, v) = dead.headers.iter().rev().find(|(k, _)| k == name)?;
        std::str::from_utf8(v).ok()
    };
    let origin = Origin {
        topic: header("dlq.topic")?.to_string(),
        partition: header("dlq.partition")?.parse().ok()?,
        offset: header("dlq.offset")?.parse().ok()?,
    };
    let headers = dead.headers.iter().filter(|(k, _)| !HEADERS.contains(&k.as_str())).cloned().collect();
    let record = Record { key: dead.key.clone(), value: dead.value.clone(), headers, timestamp_ms: dead.timestamp_ms };
    Some((origin, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> StoredRecord {
        StoredRecord {
            offset: 42,
            timestamp_ms: 1_700_000_000_123,
            key: Bytes::from_static(b"order-7"),
            value: Bytes::from_static(b"{\"amount\":10}"),
            headers: vec![
                ("id".into(), Bytes::from_static(b"evt-1")),
                ("traceparent".into(), Bytes::from_static(b"00-x")),
            ],
        }
    }

    fn header<'a>(r: &'a Record, name: &str) -> &'a [u8] {
        &r.headers.iter().find(|(k, _)| k == name).unwrap().1
    }

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_where_from_and_why() {
        let dead = dead_letter(&source(), "payments.sent", 3, "billing", 5, "card declined");
        assert_eq!((dead.key.as_ref(), dead.value.as_ref()), (&b"order-7"[..], &b"{\"amount\":10}"[..]));
        assert_eq!(dead.timestamp_ms, 1_700_000_000_123);
        assert_eq!(header(&dead, "id"), b"evt-1");
        assert_eq!(header(&dead, "traceparent"), b"00-x");
        let dlq: Vec<(&str, &[u8])> = dead.headers[2..].iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect();
        assert_eq!(
            dlq,
            [
                ("dlq.topic", &b"payments.sent"[..]),
                ("dlq.partition", b"3"),
                ("dlq.offset", b"42"),
                ("dlq.group", b"billing"),
                ("dlq.deliveries", b"5"),
                ("dlq.reason", b"card declined"),
            ]
        );
    }

    #[test]
    fn redrive_restores_the_original_and_its_origin() {
        let dead = dead_letter(&source(), "payments.sent", 3, "billing", 5, "ack timeout");
        let stored = StoredRecord {
            offset: 9,
            timestamp_ms: dead.timestamp_ms,
            key: dead.key.clone(),
            value: dead.value.clone(),
            headers: dead.headers.clone(),
        };
        let (origin, record) = redrive(&stored).unwrap();
        assert_eq!(origin, Origin { topic: "payments.sent".into(), partition: 3, offset: 42 });
        let s = source();
        assert_eq!(record, Record { key: s.key, value: s.value, headers: s.headers, timestamp_ms: s.timestamp_ms });
    }

    #[test]
    fn a_dead_letter_dead_lettered_again_names_its_newest_origin_once() {
        let first = dead_letter(&source(), "a", 0, "g1", 1, "r1");
        let again = StoredRecord {
            offset: 7,
            timestamp_ms: first.timestamp_ms,
            key: first.key.clone(),
            value: first.value.clone(),
            headers: first.headers.clone(),
        };
        let second = dead_letter(&again, "g1.dlq", 0, "g2", 2, "r2");
        assert_eq!(second.headers.iter().filter(|(k, _)| k == "dlq.topic").count(), 1);
        assert_eq!(header(&second, "dlq.topic"), b"g1.dlq");
        assert_eq!(header(&second, "dlq.offset"), b"7");
    }

    #[test]
    fn records_without_an_origin_are_not_redriven() {
        let mut r = source();
        assert_eq!(redrive(&r), None);
        r.headers.push(("dlq.topic".into(), Bytes::from_static(b"t")));
        r.headers.push(("dlq.partition".into(), Bytes::from_static(b"x")));
        r.headers.push(("dlq.offset".into(), Bytes::from_static(b"1")));
        assert_eq!(redrive(&r), None, "a partition that is not a number");
    }
}
