//! Gauges read from the broker's state at scrape time: partition offsets
//! and sizes, and consumer lag (high watermark minus committed offset, as
//! DescribeGroup computes it). The broker fills a [`Snapshot`] per scrape
//! (`Broker::metrics_text`); nothing runs between scrapes, however many
//! groups there are.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// One partition's offsets and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: u32,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub size_bytes: u64,
}

/// One committed offset's lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagState {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub lag: u64,
}

/// What one scrape reports of the broker's state.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub partitions: Vec<PartitionState>,
    pub lag: Vec<LagState>,
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(v.min(i64::MAX as u64) as i64)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Of = fn(&PartitionState) -> u64;
        let per_partition: [(&str, &str, Of); 3] = [
            ("strata_partition_high_watermark", "The next offset to be written", |p| p.high_watermark),
            ("strata_partition_log_start_offset", "The first offset still retained", |p| p.log_start_offset),
            ("strata_partition_size_bytes", "Bytes of the partition's segments", |p| p.size_bytes),
        ];
        for (name, help, of) in per_partition {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &self.partitions {
                let labels = ([("topic", p.topic.as_str())], [("partition", p.partition)]);
                gauge(of(p)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "strata_consumer_group_lag",
            "Records between a group's committed offset and the high watermark",
            None,
            MetricType::Gauge,
        )?;
        for l in &self.lag {
            let labels = ([("group", l.group.as_str()), ("topic", l.topic.as_str())], [("partition", l.partition)]);
            gauge(l.lag).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Snapshot {
    /// Appends the snapshot's gauges to `out` in the text format.
    pub fn encode_into(self, out: &mut String) -> std::fmt::Result {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        prometheus_client::encoding::prometheus_text::encode(out, &registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            lag: vec![LagState { group: "g".into(), topic: "a.b".into(), partition: 2, lag: 4 }],
        };
        let mut text = String::new();
        snapshot.encode_into(&mut text).unwrap();
        for line in [
            "strata_partition_high_watermark{topic=\"a.b\",partition=\"2\"} 10",
            "strata_partition_log_start_offset{topic=\"a.b\",partition=\"2\"} 3",
            "strata_partition_size_bytes{topic=\"a.b\",partition=\"2\"} 700",
            "strata_consumer_group_lag{group=\"g\",topic=\"a.b\",partition=\"2\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
