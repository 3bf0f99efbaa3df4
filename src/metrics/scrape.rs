//! Reading a broker's `/metrics` from outside: an HTTP GET and the text
//! format parsed by `prometheus-parse`, for `strata top` (and tests).

use std::collections::BTreeMap;

use anyhow::Context as _;
use http_body_util::BodyExt;

/// One sample: a series' name, labels and value (histograms: their count).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// `GET http://{addr}{path}` over HTTP/1.1: the status and the body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let authority = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
    let stream = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(&authority))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {authority} timed out"))?
        .with_context(|| format!("cannot connect to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driving = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, &authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await.with_context(|| format!("GET {path} from {authority}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    driving.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Parses the text format: every sample, histograms as their `_count`.
pub fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("not Prometheus' text format")?;
    Ok(scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let labels = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            Sample { name: s.metric, labels, value }
        })
        .collect())
}

/// `GET /metrics`, parsed.
pub async fn scrape(addr: &str) -> anyhow::Result<Vec<Sample>> {
    let (status, body) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics from {addr}: HTTP {status}");
    parse(&body)
}

/// The value of the series `name` whose labels include all of `labels`, summed.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_broker_writes() {
        let m = crate::metrics::Metrics::new();
        m.topic("a").produced(5, 500);
        m.request_histogram("grpc", "Produce").observe(0.002);
        m.request_histogram("grpc", "Produce").observe(0.004);
        let mut text = String::new();
        m.encode_into(&mut text).unwrap();
        let samples = parse(&text).unwrap();
        assert_eq!(sum(&samples, "strata_produce_records_total", &[("topic", "a")]), 5.0);
        assert_eq!(sum(&samples, "strata_produce_bytes_total", &[]), 500.0);
        assert_eq!(sum(&samples, "strata_request_duration_seconds_count", &[("method", "Produce")]), 2.0);
        let histogram = samples.iter().find(|s| s.name == "strata_request_duration_seconds").unwrap();
        assert_eq!(histogram.value, 2.0, "the +Inf bucket counts every observation");
    }
}
