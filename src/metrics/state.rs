//! Gauges read from the broker's state at scrape time: partition offsets
//! and sizes, and consumer lag (high watermark minus committed offset, as
//! DescribeGroup computes it). The broker fills a [`Snapshot`] per scrape
//! (`Broker::metrics_text`); nothing runs between scrapes, however many
//! groups there are.

/// One partition's offsets and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: u32,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub size_bytes: u64,
}

/// A group's lag on the partitions of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagState {
    pub group: String,
    pub topic: String,
    /// (partition, lag), by partition.
    pub partitions: Vec<(u32, u64)>,
}

/// A share group's records on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareState {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    /// Records handed out and not yet acknowledged.
    pub acquired: u64,
    /// Records not done yet: the high watermark minus the start offset.
    pub lag: u64,
}

/// What one scrape reports of the broker's state.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub partitions: Vec<PartitionState>,
    pub lag: Vec<LagState>,
    pub share: Vec<ShareState>,
}

/// Appends `v` to a label value, escaped as the text format asks.
fn push_label(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_header(out: &mut String, name: &str, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push_str(" gauge\n");
}

impl Snapshot {
    /// Appends the snapshot's gauges to `out` in the text format (0.0.4).
    ///
    /// Written here rather than through `prometheus-client`'s encoder: a
    /// scrape of a big broker is 100,000+ of these lines (a series per
    /// group and partition), and the generic encoder's formatting machinery
    /// took 72 ms for 106,000 of them where this takes a few.
    pub fn encode_into(self, out: &mut String) {
        let mut number = itoa::Buffer::new();
        type Of = fn(&PartitionState) -> u64;
        let per_partition: [(&str, &str, Of); 3] = [
            ("strata_partition_high_watermark", "The next offset to be written", |p| p.high_watermark),
            ("strata_partition_log_start_offset", "The first offset still retained", |p| p.log_start_offset),
            ("strata_partition_size_bytes", "Bytes of the partition's segments", |p| p.size_bytes),
        ];
        for (name, help, of) in per_partition {
            push_header(out, name, help);
            for p in &self.partitions {
                out.push_str(name);
                out.push_str("{topic=\"");
                push_label(out, &p.topic);
                out.push_str("\",partition=\"");
                out.push_str(number.format(p.partition));
                out.push_str("\"} ");
                out.push_str(number.format(of(p)));
                out.push('\n');
            }
        }
        let name = "strata_consumer_group_lag";
        push_header(out, name, "Records between a group's committed offset and the high watermark");
        for l in &self.lag {
            let mut labels = String::with_capacity(l.group.len() + l.topic.len() + 48);
            labels.push_str(name);
            labels.push_str("{group=\"");
            push_label(&mut labels, &l.group);
            labels.push_str("\",topic=\"");
            push_label(&mut labels, &l.topic);
            labels.push_str("\",partition=\"");
            for &(partition, lag) in &l.partitions {
                out.push_str(&labels);
                out.push_str(number.format(partition));
                out.push_str("\"} ");
                out.push_str(number.format(lag));
                out.push('\n');
            }
        }
        type ShareOf = fn(&ShareState) -> u64;
        let per_share: [(&str, &str, ShareOf); 2] = [
            ("strata_share_group_acquired", "Records a share group has handed out and not yet acknowledged", |s| {
                s.acquired
            }),
            (
                "strata_share_group_lag",
                "Records a share group is not done with (high watermark minus start offset)",
                |s| s.lag,
            ),
        ];
        for (name, help, of) in per_share {
            push_header(out, name, help);
            for s in &self.share {
                out.push_str(name);
                out.push_str("{group=\"");
                push_label(out, &s.group);
                out.push_str("\",topic=\"");
                push_label(out, &s.topic);
                out.push_str("\",partition=\"");
                out.push_str(number.format(s.partition));
                out.push_str("\"} ");
                out.push_str(number.format(of(s)));
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        push_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn gauges_carry_their_labels() {
        let snapshot = Snapshot {
            partitions: vec![PartitionState {
                topic: "a.b".into(),
                partition: 2,
                high_watermark: 10,
                log_start_offset: 3,
                size_bytes: 700,
            }],
            lag: vec![LagState { group: "g".into(), topic: "a.b".into(), partitions: vec![(2, 4)] }],
            share: vec![ShareState { group: "s".into(), topic: "a.b".into(), partition: 2, acquired: 5, lag: 6 }],
        };
        let mut text = String::new();
        snapshot.encode_into(&mut text);
        for line in [
            "strata_partition_high_watermark{topic=\"a.b\",partition=\"2\"} 10",
            "strata_partition_log_start_offset{topic=\"a.b\",partition=\"2\"} 3",
            "strata_partition_size_bytes{topic=\"a.b\",partition=\"2\"} 700",
            "strata_consumer_group_lag{group=\"g\",topic=\"a.b\",partition=\"2\"} 4",
            "strata_share_group_acquired{group=\"s\",topic=\"a.b\",partition=\"2\"} 5",
            "strata_share_group_lag{group=\"s\",topic=\"a.b\",partition=\"2\"} 6",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
