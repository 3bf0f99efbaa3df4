//! `strata bench limits`: the machine's own limits, measured in this run on
//! this disk, and strata's figures as ratios of them (these machines are
//! noisy, so only ratios within one run mean anything).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::load;
use super::{BenchArgs, KafkaClient, LimitsArgs};
use crate::storage::FlushPolicy;

/// MB/s of appending `chunk`-byte writes to a file for about `time` (or
/// until `max_bytes`),
/// optionally fdatasync'ing each (a plain write loop; no fio needed).
fn file_append(dir: &Path, chunk: usize, sync: bool, time: Duration, max_bytes: u64) -> anyhow::Result<f64> {
    let path = dir.join(format!("limits-{chunk}-{sync}.bin"));
    let mut file = std::fs::File::create(&path)?;
    let buf = vec![0x5a; chunk];
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < time && written < max_bytes {
        file.write_all(&buf)?;
        if sync {
            file.sync_data()?;
        }
        written += chunk as u64;
    }
    let rate = written as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Latency of 10 KiB append + fdatasync at about 1,000 per second (the
/// fsyncs step 5 asks of the disk) for `time`: (p50, p99) in ms.
fn fsync_latency(dir: &Path, time: Duration) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("limits-fsync-latency.bin");
    let mut file = std::fs::File::create(&path)?;
    let buf = vec![0x5a; 10 << 10];
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let started = Instant::now();
    while started.elapsed() < time {
        let t = Instant::now();
        file.write_all(&buf)?;
        file.sync_data()?;
        hist.record(t.elapsed().as_micros() as u64)?;
        std::thread::sleep(Duration::from_micros(500));
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok((hist.value_at_quantile(0.5) as f64 / 1e3, hist.value_at_quantile(0.99) as f64 / 1e3))
}

/// Waits (up to 20 s) until the disk answers small fsyncs with p99 < 1 ms,
/// as it does when idle here: right after the GBs the earlier steps wrote,
/// this VM's disk keeps writing back for seconds, and its fsync p99 (3-5
/// ms) rather than the broker's set step 5's. Returns the last probe.
fn wait_for_quiet_disk(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let mut probe = fsync_latency(dir, Duration::from_secs(1))?;
    for _ in 0..19 {
        if probe.1 < 1.0 {
            break;
        }
        probe = fsync_latency(dir, Duration::from_secs(1))?;
    }
    Ok(probe)
}

/// MB/s pushed through a loopback TCP socket pair by tokio for about `time`.
async fn loopback_tcp(time: Duration) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(total);
            }
            total += n as u64;
        }
    });
    let mut w = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    while started.elapsed() < time {
        w.write_all(&buf).await?;
    }
    drop(w);
    let total = reader.await??;
    Ok(total as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// The run with the median throughput.
fn median_run(mut v: Vec<super::report::Summary>) -> super::report::Summary {
    v.sort_by(|a, b| a.mb_per_s.total_cmp(&b.mb_per_s));
    v.swap_remove(v.len() / 2)
}

fn median3(mut v: [f64; 3]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[1]
}

pub async fn run(args: &LimitsArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let dir = tempfile::Builder::new().prefix("strata-limits-").tempdir_in(&args.data_dir)?;
    let t = Duration::from_secs(2);
    eprintln!("[limits] measuring baselines on {}", args.data_dir.display());
    let sync_64k = file_append(dir.path(), 64 << 10, true, t, 4 << 30)?;
    let sync_1m = file_append(dir.path(), 1 << 20, true, t, 4 << 30)?;
    // Like step 3: 1 GB into the page cache. Its CPU per GB (the kernel's
    // copy into the page cache, which every produce row pays too) is the
    // floor of the rows' CPU-s/GB on this machine.
    let cpu = super::cpu::CpuMeter::begin(None);
    let buffered_bytes = 1u64 << 30;
    let buffered = file_append(dir.path(), 1 << 20, false, Duration::from_secs(3600), buffered_bytes)?;
    let buffered_cpu = super::cpu::per_gb(cpu.used(), buffered_bytes);
    let tcp = loopback_tcp(t).await?;
    let buffered_cpu_text = buffered_cpu.map_or("-".into(), |c| format!("{c:.2}"));
    eprintln!("[limits] append+fdatasync 64 KiB {sync_64k:.0} MB/s, 1 MiB {sync_1m:.0} MB/s; buffered {buffered:.0} MB/s ({buffered_cpu_text} CPU-s/GB); loopback TCP {tcp:.0} MB/s");

    let base = BenchArgs {
        embedded: true,
        server: None,
        data_dir: Some(dir.path().join("broker")),
        topic: String::new(),
        partitions: 1,
        record_bytes: 1024,
        batch: 100,
        producers: 8,
        consumers: 1,
        records: None,
        duration: Some(Duration::from_secs(args.seconds)),
        rate: 0,
        flush: FlushPolicy::Always,
        json: true,
        format: None,
        raw: false,
        in_flight: 1,
        stream: false,
        subscribe: false,
        ids: false,
        dedupe: false,
        idle_rules: 0,
        tls: false,
        acl_rules: 0,
        protocol: super::Protocol::Grpc,
        kafka_property: Vec::new(),
        client: super::KafkaClient::Librdkafka,
    };
    let target = load::Target::start(&base).await?;
    if args.idle_rules > 0 {
        eprintln!("[limits] loading {} alert rules that match nothing", args.idle_rules);
        super::alert::load_idle_rules(&mut load::client(&target.url).await?, args.idle_rules).await?;
    }
    let on = |topic: &str| BenchArgs { server: Some(target.url.clone()), topic: topic.into(), ..base.clone() };
    eprintln!("[limits] 1. produce 1 KiB x 100, 8 producers, flush always");
    let p1 = load::produce(&on("limits.always.1k")).await?;
    // The same producers, each keeping its one request in flight on a
    // ProduceStream instead of a unary call per request: what the HTTP/2
    // stream per request (headers, trailers, a task on each side) costs.
    eprintln!("[limits] 1s. same, each producer's one request in flight on a ProduceStream");
    let p1o = load::produce(&BenchArgs { stream: true, ..on("limits.always.1k.stream1") }).await?;
    // A Kafka producer keeps up to 5 requests in flight by default; with one
    // each, the 8 producers wait for every fsync together and the broker's
    // CPU work cannot overlap it.
    eprintln!("[limits] 1b. same, each producer pipelining 4 requests over ProduceStream");
    let p1s = load::produce(&BenchArgs { in_flight: 4, ..on("limits.always.1k.stream") }).await?;
    // The same loads through the Kafka listener: librdkafka (what most
    // Kafka users run) and rskafka (whole batches, as 3c's gRPC client).
    let kafka = super::kafka::KafkaTarget::strata(&target)?;
    let through = |client: KafkaClient, topic: &str, a: &BenchArgs| BenchArgs {
        protocol: super::Protocol::Kafka,
        client,
        topic: topic.into(),
        ..a.clone()
    };
    let stream4 = BenchArgs { in_flight: 4, ..base.clone() };
    eprintln!("[limits] 1k. same as 1b through the Kafka listener, librdkafka");
    let p1k =
        super::kafka::produce_on(&kafka, &through(KafkaClient::Librdkafka, "limits.always.1k.kafka", &stream4)).await?;
    eprintln!("[limits] 1r. same, rskafka");
    let p1r =
        super::kafka::produce_on(&kafka, &through(KafkaClient::Rskafka, "limits.always.1k.rskafka", &stream4)).await?;
    // Security: the same load through a broker serving TLS, and through one
    // with security on and 1,000 ACL entries, each against 1b.
    let tls_target =
        load::Target::start(&BenchArgs { tls: true, data_dir: Some(dir.path().join("broker-tls")), ..base.clone() })
            .await?;
    let on_tls = |topic: &str| BenchArgs { server: Some(tls_target.url.clone()), topic: topic.into(), ..base.clone() };
    let acl_target = load::Target::start(&BenchArgs {
        acl_rules: 1000,
        data_dir: Some(dir.path().join("broker-acl")),
        ..base.clone()
    })
    .await?;
    let on_acl = |topic: &str| BenchArgs { server: Some(acl_target.url.clone()), topic: topic.into(), ..base.clone() };
    // Alternated twice, plaintext first, each against the plaintext run
    // beside it: by now the disk is writing back what 1-1r wrote, and a
    // row run after another measures that.
    let (mut p1p, mut p1t, mut p1a) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..2 {
        eprintln!("[limits] 1p. same as 1b again, plaintext (round {round})");
        p1p.push(load::produce(&BenchArgs { in_flight: 4, ..on(&format!("limits.always.1k.plain{round}")) }).await?);
        eprintln!("[limits] 1t. same over TLS (rustls, ring, AES-128-GCM)");
        p1t.push(load::produce(&BenchArgs { in_flight: 4, ..on_tls(&format!("limits.always.1k.tls{round}")) }).await?);
        eprintln!("[limits] 1a. same, security on with 1,000 ACL entries");
        p1a.push(load::produce(&BenchArgs { in_flight: 4, ..on_acl(&format!("limits.acl{round}")) }).await?);
    }
    acl_target.stop().await?;
    let mean = |v: &[super::report::Summary]| v.iter().map(|s| s.mb_per_s).sum::<f64>() / v.len() as f64;
    let (p1p_mb, p1t_mb, p1a_mb) = (mean(&p1p), mean(&p1t), mean(&p1a));
    let cpu = |v: &[super::report::Summary]| v.iter().filter_map(|s| s.cpu_s_per_gb).sum::<f64>() / v.len() as f64;
    let (p1p_cpu, p1t_cpu, p1a_cpu) = (cpu(&p1p), cpu(&p1t), cpu(&p1a));
    eprintln!("[limits] 2. produce 100 B x 100, 8 producers, flush always");
    let p2 = load::produce(&BenchArgs { record_bytes: 100, ..on("limits.always.100b") }).await?;
    // A fixed 1 GB per flush-never step, not a duration: what fits in the
    // page cache measures the broker; a 5 s run (3-4 GB) measured the disk's
    // writeback once free memory ran out (a plain `dd` loop here fell from
    // 1.9 GB/s to 0.4 GB/s on its second 5 s run). Each step's topic is
    // fsynced afterwards, so the next starts with no dirty pages.
    let never = BenchArgs { flush: FlushPolicy::Never, records: Some(1_000_000), duration: None, ..on("limits.never") };
    // On this VM, the first write to a page of guest memory costs a fault
    // in the host (about 20 us per 4 KiB): once the page cache grows into
    // memory not used since boot (or since the host reclaimed it), a plain
    // `dd` falls from 3.6 GB/s to 0.3-0.45 GB/s, and step 3 with it (280 vs
    // 860-960 MB/s measured back to back). A host whose memory is full of
    // page cache recycles pages and never pays that. So each flush-never
    // step first writes and deletes 1 GB (the buffered-write baseline at
    // that moment), and the broker's writes reuse those pages.
    let touch = |label: &str| -> anyhow::Result<f64> {
        let rate = file_append(dir.path(), 1 << 20, false, Duration::from_secs(10), 1 << 30)?;
        eprintln!("[limits] {label}: buffered write of 1 GB to warm the page cache: {rate:.0} MB/s");
        Ok(rate)
    };
    // Loopback TCP swings 3.2-5.4 GB/s between minutes here: the ratios
    // use the median of one measurement at the start and one right before
    // each of steps 3 and 4.
    let tcp3 = loopback_tcp(t).await?;
    let fresh = touch("3")?;
    eprintln!("[limits] 3. produce 1 GB (1 KiB x 100), 8 producers, flush never");
    let p3 = load::produce(&never).await?;
    load::settle(&target.url, &never.topic).await?;
    let fresh_b = touch("3b")?;
    eprintln!("[limits] 3b. same, each producer pipelining 4 requests over ProduceStream");
    let p3s = load::produce(&BenchArgs { in_flight: 4, topic: "limits.never.stream".into(), ..never.clone() }).await?;
    load::settle(&target.url, "limits.never.stream").await?;
    let fresh_c = touch("3c")?;
    eprintln!("[limits] 3c. same, client-encoded batches");
    let p3r = load::produce(&BenchArgs { in_flight: 4, raw: true, topic: "limits.never.raw".into(), ..never.clone() })
        .await?;
    load::settle(&target.url, "limits.never.raw").await?;
    let never4 = BenchArgs { in_flight: 4, ..never.clone() };
    let fresh_k = touch("3k")?;
    eprintln!("[limits] 3k. same as 3b through the Kafka listener, librdkafka");
    let p3k =
        super::kafka::produce_on(&kafka, &through(KafkaClient::Librdkafka, "limits.never.kafka", &never4)).await?;
    load::settle(&target.url, "limits.never.kafka").await?;
    let fresh_kr = touch("3r")?;
    eprintln!("[limits] 3r. same, rskafka");
    let p3kr =
        super::kafka::produce_on(&kafka, &through(KafkaClient::Rskafka, "limits.never.rskafka", &never4)).await?;
    load::settle(&target.url, "limits.never.rskafka").await?;
    let tcp4 = loopback_tcp(t).await?;
    let tcp_all = [tcp, tcp3, tcp4];
    let tcp = median3(tcp_all);
    eprintln!("[limits] loopback TCP {tcp3:.0} MB/s before step 3, {tcp4:.0} before step 4; median {tcp:.0}");
    eprintln!("[limits] 4. consume the 1 GB step 3 wrote (page cache)");
    let c4 = load::consume(&never).await?;
    eprintln!("[limits] 4b. consume again, raw batches");
    let c4r = load::consume(&BenchArgs { raw: true, ..never.clone() }).await?;
    eprintln!("[limits] 4c. consume again, raw batches pushed over Subscribe");
    let c4s = load::consume(&BenchArgs { raw: true, subscribe: true, ..never.clone() }).await?;
    eprintln!("[limits] 4k. consume again through the Kafka listener, librdkafka");
    let c4k = super::kafka::consume_on(&kafka, &through(KafkaClient::Librdkafka, &never.topic, &never)).await?;
    eprintln!("[limits] 4r. same, rskafka");
    let c4kr = super::kafka::consume_on(&kafka, &through(KafkaClient::Rskafka, &never.topic, &never)).await?;
    // 300 MB written with flush never to each broker, then read back raw over
    // Subscribe: plaintext and TLS side by side.
    let fill = |a: BenchArgs| BenchArgs { flush: FlushPolicy::Never, records: Some(300_000), duration: None, ..a };
    // Each read takes 0.15-0.4 s here, and single pairs ranged 0.42-0.81:
    // three alternated rounds, each row's median.
    let (mut c4p, mut c4t, mut c4q, mut c4u) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        eprintln!("[limits] 4p. consume 300 MB raw over Subscribe (plaintext, for 4t; round {round})");
        c4p.push(load::consume(&BenchArgs { raw: true, subscribe: true, ..fill(on("limits.consume.plain")) }).await?);
        eprintln!("[limits] 4t. the same over TLS");
        c4t.push(load::consume(&BenchArgs { raw: true, subscribe: true, ..fill(on_tls("limits.consume.tls")) }).await?);
        // Per record (what the CLI and most gRPC consumers read), side by side.
        eprintln!("[limits] 4q. consume 300 MB per record over Subscribe (plaintext, for 4u)");
        c4q.push(load::consume(&BenchArgs { subscribe: true, ..fill(on("limits.consume.plain")) }).await?);
        eprintln!("[limits] 4u. the same over TLS");
        c4u.push(load::consume(&BenchArgs { subscribe: true, ..fill(on_tls("limits.consume.tls")) }).await?);
    }
    let (c4p, c4t, c4q, c4u) = (median_run(c4p), median_run(c4t), median_run(c4q), median_run(c4u));
    tls_target.stop().await?;
    // Last: right after the fsync-heavy steps 1 and 2 this VM's disk is
    // still busy, and p99 measured 3-5 ms instead of 1.1 ms.
    let (fsync_p50, fsync_p99) = wait_for_quiet_disk(dir.path())?;
    eprintln!("[limits] disk: 10 KiB append+fdatasync p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms");
    eprintln!("[limits] 5. end to end at 10,000 records/s, flush always");
    let e5 = load::e2e(&BenchArgs { rate: 10_000, producers: 1, batch: 10, ..on("limits.e2e") }).await?;
    let share = |topic: &str, push: bool, bench: BenchArgs| super::share::ShareArgs {
        bench: BenchArgs { topic: topic.into(), ..bench },
        workers: 8,
        ack_every: 100,
        push,
        release_every: 0,
        release_delay: Duration::from_millis(100),
    };
    let drain = BenchArgs { records: Some(200_000), duration: None, producers: 4, ..on("") };
    eprintln!("[limits] 8. share group: 8 workers drain 200,000 x 1 KiB, acks fsynced (ShareFetch + Acknowledge)");
    let s8 = super::share::run(&share("limits.share", false, drain.clone())).await?;
    eprintln!("[limits] 8p. same, pushed (ShareSubscribe)");
    let s8p = super::share::run(&share("limits.share.push", true, drain)).await?;
    eprintln!("[limits] 9. share group pushed at 10,000 records/s (send -> delivered), as step 5");
    let paced = BenchArgs { rate: 10_000, producers: 1, batch: 10, ..on("") };
    let s9 = super::share::run(&share("limits.share.e2e", true, paced)).await?;
    target.stop().await?;
    let delivery_p99 = s9.extra.get("delivery_p99_ms").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);

    let rows = serde_json::json!({
        "baselines_mb_per_s": {"append_fdatasync_64k": sync_64k, "append_fdatasync_1m": sync_1m, "buffered_write": buffered, "buffered_write_first_touch": fresh, "loopback_tcp": tcp, "loopback_tcp_each": tcp_all, "buffered_write_before_3b": fresh_b, "buffered_write_before_3c": fresh_c, "fdatasync_10k_p50_ms": fsync_p50, "fdatasync_10k_p99_ms": fsync_p99, "buffered_write_cpu_s_per_gb": buffered_cpu},
        "produce_always_1k": {"cpu_s_per_gb": p1.cpu_s_per_gb, "requests_per_fsync": p1.requests_per_fsync, "fsyncs": p1.fsyncs, "mb_per_s": p1.mb_per_s, "records_per_s": p1.records_per_s, "p99_ms": p1.p99_ms, "ratio_to_fdatasync_1m": p1.mb_per_s / sync_1m},
        "produce_always_1k_stream1": {"cpu_s_per_gb": p1o.cpu_s_per_gb, "requests_per_fsync": p1o.requests_per_fsync, "fsyncs": p1o.fsyncs, "mb_per_s": p1o.mb_per_s, "records_per_s": p1o.records_per_s, "p99_ms": p1o.p99_ms, "ratio_to_fdatasync_1m": p1o.mb_per_s / sync_1m, "ratio_to_unary": p1o.mb_per_s / p1.mb_per_s},
        "produce_always_1k_stream4": {"cpu_s_per_gb": p1s.cpu_s_per_gb, "requests_per_fsync": p1s.requests_per_fsync, "fsyncs": p1s.fsyncs, "mb_per_s": p1s.mb_per_s, "records_per_s": p1s.records_per_s, "p99_ms": p1s.p99_ms, "ratio_to_fdatasync_1m": p1s.mb_per_s / sync_1m},
        "produce_always_1k_kafka": {"cpu_s_per_gb": p1k.cpu_s_per_gb, "mb_per_s": p1k.mb_per_s, "records_per_s": p1k.records_per_s, "p99_ms": p1k.p99_ms, "client": "librdkafka", "ratio_to_grpc": p1k.mb_per_s / p1s.mb_per_s},
        "produce_always_1k_rskafka": {"cpu_s_per_gb": p1r.cpu_s_per_gb, "requests_per_fsync": p1r.requests_per_fsync, "fsyncs": p1r.fsyncs, "mb_per_s": p1r.mb_per_s, "records_per_s": p1r.records_per_s, "p99_ms": p1r.p99_ms, "client": "rskafka", "ratio_to_grpc": p1r.mb_per_s / p1s.mb_per_s},
        "produce_always_1k_plain_beside": {"cpu_s_per_gb": p1p_cpu, "mb_per_s": p1p_mb, "each": p1p.iter().map(|s| s.mb_per_s).collect::<Vec<_>>()},
        "produce_always_1k_tls": {"cpu_s_per_gb": p1t_cpu, "mb_per_s": p1t_mb, "each": p1t.iter().map(|s| s.mb_per_s).collect::<Vec<_>>(), "ratio_to_plain": p1t_mb / p1p_mb},
        "produce_always_1k_acl1000": {"cpu_s_per_gb": p1a_cpu, "mb_per_s": p1a_mb, "each": p1a.iter().map(|s| s.mb_per_s).collect::<Vec<_>>(), "ratio_to_plain": p1a_mb / p1p_mb},
        "consume_raw_subscribe_300mb_plain": {"cpu_s_per_gb": c4p.cpu_s_per_gb, "mb_per_s": c4p.mb_per_s},
        "consume_raw_subscribe_300mb_tls": {"cpu_s_per_gb": c4t.cpu_s_per_gb, "mb_per_s": c4t.mb_per_s, "ratio_to_plain": c4t.mb_per_s / c4p.mb_per_s},
        "consume_subscribe_300mb_plain": {"cpu_s_per_gb": c4q.cpu_s_per_gb, "mb_per_s": c4q.mb_per_s},
        "consume_subscribe_300mb_tls": {"cpu_s_per_gb": c4u.cpu_s_per_gb, "mb_per_s": c4u.mb_per_s, "ratio_to_plain": c4u.mb_per_s / c4q.mb_per_s},
        "produce_always_100b": {"cpu_s_per_gb": p2.cpu_s_per_gb, "requests_per_fsync": p2.requests_per_fsync, "fsyncs": p2.fsyncs, "records_per_s": p2.records_per_s, "mb_per_s": p2.mb_per_s, "p99_ms": p2.p99_ms},
        "produce_never_1k": {"cpu_s_per_gb": p3.cpu_s_per_gb, "mb_per_s": p3.mb_per_s, "ratio_to_tcp": p3.mb_per_s / tcp, "ratio_to_buffered_write_before": p3.mb_per_s / fresh},
        "produce_never_1k_stream4": {"cpu_s_per_gb": p3s.cpu_s_per_gb, "mb_per_s": p3s.mb_per_s, "ratio_to_tcp": p3s.mb_per_s / tcp, "ratio_to_buffered_write_before": p3s.mb_per_s / fresh_b},
        "produce_never_1k_stream4_raw": {"cpu_s_per_gb": p3r.cpu_s_per_gb, "mb_per_s": p3r.mb_per_s, "ratio_to_tcp": p3r.mb_per_s / tcp, "ratio_to_buffered_write_before": p3r.mb_per_s / fresh_c},
        "produce_never_1k_kafka": {"cpu_s_per_gb": p3k.cpu_s_per_gb, "mb_per_s": p3k.mb_per_s, "client": "librdkafka", "ratio_to_grpc_raw": p3k.mb_per_s / p3r.mb_per_s, "ratio_to_buffered_write_before": p3k.mb_per_s / fresh_k},
        "produce_never_1k_rskafka": {"cpu_s_per_gb": p3kr.cpu_s_per_gb, "mb_per_s": p3kr.mb_per_s, "client": "rskafka", "ratio_to_grpc_raw": p3kr.mb_per_s / p3r.mb_per_s, "ratio_to_buffered_write_before": p3kr.mb_per_s / fresh_kr},
        "consume_page_cache": {"cpu_s_per_gb": c4.cpu_s_per_gb, "mb_per_s": c4.mb_per_s, "records": c4.records, "ratio_to_tcp": c4.mb_per_s / tcp},
        "consume_page_cache_raw": {"cpu_s_per_gb": c4r.cpu_s_per_gb, "mb_per_s": c4r.mb_per_s, "records": c4r.records, "ratio_to_tcp": c4r.mb_per_s / tcp},
        "consume_page_cache_raw_subscribe": {"cpu_s_per_gb": c4s.cpu_s_per_gb, "mb_per_s": c4s.mb_per_s, "records": c4s.records, "ratio_to_tcp": c4s.mb_per_s / tcp},
        "consume_page_cache_kafka": {"cpu_s_per_gb": c4k.cpu_s_per_gb, "mb_per_s": c4k.mb_per_s, "records": c4k.records, "client": "librdkafka", "ratio_to_grpc_raw_subscribe": c4k.mb_per_s / c4s.mb_per_s},
        "consume_page_cache_rskafka": {"cpu_s_per_gb": c4kr.cpu_s_per_gb, "mb_per_s": c4kr.mb_per_s, "records": c4kr.records, "client": "rskafka", "ratio_to_grpc_raw_subscribe": c4kr.mb_per_s / c4s.mb_per_s},
        "e2e_10k_always": {"cpu_s_per_gb": e5.cpu_s_per_gb, "p50_ms": e5.p50_ms, "p99_ms": e5.p99_ms, "p999_ms": e5.p999_ms, "max_ms": e5.max_ms, "records_per_s": e5.records_per_s},
        "share_drain_8_workers": {"cpu_s_per_gb": s8.cpu_s_per_gb, "records_per_s": s8.records_per_s, "fsyncs": s8.fsyncs},
        "share_drain_8_workers_push": {"cpu_s_per_gb": s8p.cpu_s_per_gb, "records_per_s": s8p.records_per_s, "fsyncs": s8p.fsyncs},
        "share_push_10k": {"delivery_p99_ms": delivery_p99, "ack_p99_ms": s9.p99_ms, "ratio_to_e2e_p99": delivery_p99 / e5.p99_ms},
    });
    if args.json {
        println!("{rows}");
        return Ok(());
    }
    println!("baselines (this run, this disk): append+fdatasync 64 KiB {sync_64k:.0} MB/s, 1 MiB {sync_1m:.0} MB/s; buffered write {buffered:.0} MB/s at {buffered_cpu_text} CPU-s/GB; loopback TCP {tcp:.0} MB/s (median of {:.0}, {:.0}, {:.0})", tcp_all[0], tcp_all[1], tcp_all[2]);
    println!("{:<62} {:>14} {:>22} {:>12} {:>10}", "target", "strata", "ratio / goal", "CPU-s/GB", "req/fsync");
    let ratio = |label: &str, s: &super::report::Summary, base: f64, goal: &str| {
        let cpu = s.cpu_s_per_gb.map_or("-".to_string(), |c| format!("{c:.2}"));
        let per_fsync = s.requests_per_fsync.map_or(String::new(), |r| format!("{r:.2}"));
        println!("{label:<62} {:>9.1} MB/s {:>10.2} ({goal}) {cpu:>8} {per_fsync:>10}", s.mb_per_s, s.mb_per_s / base);
    };
    ratio("1. produce 1 KiB x100, 8 producers, always vs fdatasync 1 MiB", &p1, sync_1m, ">= 0.50");
    ratio("1s. same, the 1 in flight on a ProduceStream", &p1o, sync_1m, ">= 0.50");
    ratio("1b. same, 4 in flight per producer (ProduceStream)", &p1s, sync_1m, ">= 0.50");
    ratio("1k. same as 1b, Kafka protocol (librdkafka) vs 1b", &p1k, p1s.mb_per_s, ">= 0.9");
    ratio("1r. same, Kafka protocol (rskafka) vs 1b", &p1r, p1s.mb_per_s, ">= 0.9");
    let beside = |label: &str, mb: f64, cpu: f64, goal: &str| {
        println!("{label:<62} {mb:>9.1} MB/s {:>10.2} ({goal}) {cpu:>8.2}", mb / p1p_mb);
    };
    beside("1p. same as 1b again, plaintext (2 rounds, mean)", p1p_mb, p1p_cpu, "1.00");
    beside("1t. same over TLS vs 1p (alternated)", p1t_mb, p1t_cpu, ">= 0.7");
    beside("1a. same, security on, 1,000 ACL entries vs 1p", p1a_mb, p1a_cpu, "noise");
    println!(
        "{:<62} {:>8.0} rec/s {:>22} {:>8} {:>10}",
        "2. produce 100 B x100, 8 producers, always",
        p2.records_per_s,
        "(>= 300000 rec/s)",
        p2.cpu_s_per_gb.map_or("-".to_string(), |c| format!("{c:.2}")),
        p2.requests_per_fsync.map_or(String::new(), |r| format!("{r:.2}"))
    );
    ratio("3. produce never (1 GB) vs loopback TCP", &p3, tcp, ">= 0.25");
    ratio("   the same vs its buffered write of 1 GB just before", &p3, fresh, "its bound here");
    ratio("3b. same, 4 in flight per producer (ProduceStream)", &p3s, tcp, ">= 0.25");
    ratio("   the same vs its buffered write of 1 GB just before", &p3s, fresh_b, "its bound here");
    ratio("3c. same, client-encoded batches (record_batch)", &p3r, tcp, ">= 0.25");
    ratio("   the same vs its buffered write of 1 GB just before", &p3r, fresh_c, "its bound here");
    ratio("3k. same as 3b, Kafka protocol (librdkafka) vs 3c", &p3k, p3r.mb_per_s, ">= 0.9");
    ratio("3r. same, Kafka protocol (rskafka) vs 3c", &p3kr, p3r.mb_per_s, ">= 0.9");
    ratio("4. consume from page cache vs loopback TCP", &c4, tcp, ">= 0.50");
    ratio("4b. same, raw batches", &c4r, tcp, ">= 0.50");
    ratio("4c. same, raw batches over Subscribe", &c4s, tcp, ">= 0.50");
    ratio("4k. same, Kafka Fetch (librdkafka) vs 4c", &c4k, c4s.mb_per_s, ">= 0.9");
    ratio("4t. consume 300 MB raw, Subscribe, TLS vs 4p (median of 3)", &c4t, c4p.mb_per_s, ">= 0.7");
    ratio("4u. same per record, TLS vs 4q (median of 3)", &c4u, c4q.mb_per_s, ">= 0.7");
    ratio("4r. same, Kafka Fetch (rskafka) vs 4c", &c4kr, c4s.mb_per_s, ">= 0.9");
    println!(
        "{:<62} p99 {:.2} ms, p99.9 {:.2} ms (< 2, < 10)",
        "5. e2e latency at 10k rec/s, always (send -> received)", e5.p99_ms, e5.p999_ms
    );
    println!("{:<62} p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms", "   the disk just before: 10 KiB append+fdatasync");
    let share_row = |label: &str, s: &super::report::Summary| {
        let cpu = s.cpu_s_per_gb.map_or("-".to_string(), |c| format!("{c:.2}"));
        println!("{label:<62} {:>8.0} rec/s {:>22} {cpu:>8}", s.records_per_s, "(>= 100000 rec/s)");
    };
    share_row("8. share group, 8 workers, 1 KiB, acks fsynced, acknowledged", &s8);
    share_row("8p. same, pushed (ShareSubscribe)", &s8p);
    println!(
        "{:<62} p99 {delivery_p99:.2} ms {:>10.2} (<= 2x step 5)",
        "9. share push at 10k rec/s (send -> delivered) vs step 5",
        delivery_p99 / e5.p99_ms
    );
    Ok(())
}
