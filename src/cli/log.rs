//! `strata log dump PATH` and `strata log verify DIR`: offline inspection of
//! segment and index files through the storage engine's own codecs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;

use crate::cli::time::format_ms;
use crate::storage::batch::{self, BatchHeader, BATCH_BYTES_LIMIT};
use crate::storage::fs::{FileSystem, StdFs};
use crate::storage::index::{parse_offset_index, parse_time_index};
use crate::storage::verify::{self, VerifyReport};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print the batches of a .log (or the entries of a .index/.timeindex).
    Dump {
        /// A segment (.log), offset index (.index) or time index (.timeindex) file.
        path: PathBuf,
        /// Also print every record.
        #[arg(long)]
        records: bool,
    },
    /// Check every segment and index under a data dir, topic or partition dir.
    Verify {
        /// A data dir, topic dir or partition dir.
        dir: PathBuf,
    },
    /// Rewrite segments of strata's first record format as Kafka's (the
    /// broker also does it when it opens them). Stop the broker first.
    Upgrade {
        /// A data dir, topic dir or partition dir.
        dir: PathBuf,
    },
}

pub fn run(command: LogCommand) -> anyhow::Result<()> {
    match command {
        LogCommand::Dump { path, records } => dump(&path, records),
        LogCommand::Upgrade { dir } => upgrade(&dir),
        LogCommand::Verify { dir } => {
            let report = verify_with_progress(&dir)?;
            println!(
                "verified {} partition(s), {} segment(s), {} batch(es), {} record(s), {} bytes",
                report.partitions, report.segments, report.batches, report.records, report.bytes
            );
            if report.v1_segments > 0 {
                println!(
                    "{} segment(s) in format v1 (strata's first record format): the broker upgrades them to \
                     Kafka's when it opens them, or run `strata log upgrade {}` now",
                    report.v1_segments,
                    dir.display()
                );
            }
            if report.is_clean() {
                println!("OK: no problems found");
                Ok(())
            } else {
                for p in &report.problems {
                    println!("PROBLEM {p}");
                }
                anyhow::bail!("{} problem(s) found in {}", report.problems.len(), dir.display())
            }
        }
    }
}

fn verify_with_progress(dir: &Path) -> anyhow::Result<VerifyReport> {
    if !dir.exists() {
        anyhow::bail!("{} does not exist", dir.display());
    }
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let deleting = |name: &str| name.starts_with(crate::broker::data_dir::DELETED_PREFIX);
    let report = verify::verify_tree(Arc::new(StdFs), dir, &deleting, &mut |r| {
        if last.elapsed().as_millis() >= 500 {
            last = std::time::Instant::now();
            eprint!(
                "\rverifying: {} partition(s), {} segment(s), {:.1} MiB, {:.1} s",
                r.partitions,
                r.segments,
                r.bytes as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    })?;
    if started.elapsed().as_millis() >= 500 {
        eprintln!();
    }
    Ok(report)
}

fn dump(path: &Path, records: bool) -> anyhow::Result<()> {
    let bytes = StdFs.read_file(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let base: u64 = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap_or(0);
    match path.extension().and_then(|e| e.to_str()) {
        Some("index") => {
            for (i, e) in parse_offset_index(&bytes).iter().enumerate() {
                println!("entry {i}: offset {} -> position {}", base + e.relative_offset as u64, e.position);
            }
        }
        Some("timeindex") => {
            for (i, e) in parse_time_index(&bytes).iter().enumerate() {
                println!(
                    "entry {i}: max timestamp {} ({}) at offset {}",
                    e.timestamp_ms,
                    format_ms(e.timestamp_ms),
                    base + e.relative_offset as u64
                );
            }
        }
        _ => dump_log(&bytes, records)?,
    }
    Ok(())
}

fn upgrade(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        anyhow::bail!("{} does not exist", dir.display());
    }
    let fs = StdFs;
    let deleting = |name: &str| name.starts_with(crate::broker::data_dir::DELETED_PREFIX);
    let partitions = verify::find_partitions(&fs, dir, &deleting)?;
    let (mut segments, mut records) = (0, 0);
    for (i, partition) in partitions.iter().enumerate() {
        let done = crate::storage::upgrade::upgrade_partition(&fs, partition, &mut |done, of| {
            eprint!("\r{}: segment {done} of {of}", partition.display());
        })?;
        if done.segments > 0 {
            eprintln!();
        }
        segments += done.segments;
        records += done.records;
        if (i + 1) % 100 == 0 {
            eprintln!("checked {} of {} partition(s)", i + 1, partitions.len());
        }
    }
    println!("upgraded {segments} segment(s) ({records} records) in {} partition(s)", partitions.len());
    Ok(())
}

fn dump_log(bytes: &[u8], records: bool) -> anyhow::Result<()> {
    if crate::storage::upgrade::format_of(bytes) == crate::storage::upgrade::Format::V1 {
        return dump_v1(bytes, records);
    }
    let mut pos = 0usize;
    let mut count = 0u64;
    let mut problems = 0u64;
    while pos < bytes.len() {
        let header = match BatchHeader::parse(&bytes[pos..], BATCH_BYTES_LIMIT) {
            Ok(h) if pos + h.total_len <= bytes.len() => h,
            Ok(h) => {
                println!("position {pos}: torn batch ({} bytes declared, {} present)", h.total_len, bytes.len() - pos);
                problems += 1;
                break;
            }
            Err(e) => {
                println!("position {pos}: invalid batch header: {e} ({} bytes to the end)", bytes.len() - pos);
                problems += 1;
                break;
            }
        };
        let whole = &bytes[pos..pos + header.total_len];
        let crc = match batch::verify_crc(&header, whole) {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                problems += 1;
                format!("BAD ({e})")
            }
        };
        let producer = header
            .producer()
            .map(|p| format!("{}:{}:{}", p.producer_id, p.producer_epoch, p.first_sequence))
            .unwrap_or_else(|| "-".into());
        let codec = header.compression().map_or("unknown", |c| c.name());
        println!(
            "batch offsets {}..={} count {} position {} size {} first_ts {} max_ts {} producer {} compression {codec} crc {}",
            header.base_offset,
            header.last_offset(),
            header.record_count,
            pos,
            header.total_len,
            format_ms(header.first_timestamp),
            format_ms(header.max_timestamp),
            producer,
            crc
        );
        if records {
            print_records(batch::decode_records(&bytes::Bytes::copy_from_slice(whole)));
        }
        count += 1;
        pos += header.total_len;
    }
    println!("{count} batch(es), {} bytes", bytes.len());
    if problems > 0 {
        // A dump that shows damage fails, so scripts notice.
        anyhow::bail!("{problems} problem(s) in this segment (bad CRC, torn or invalid batch): see the lines above");
    }
    Ok(())
}

/// `log dump --records`: one line per record, or why they do not decode.
fn print_records<E: std::fmt::Display>(decoded: Result<Vec<crate::storage::batch::StoredRecord>, E>) {
    match decoded {
        Ok(rs) => {
            for r in rs {
                println!(
                    "  offset {} ts {} key {:?} value {:?} headers {}",
                    r.offset,
                    format_ms(r.timestamp_ms),
                    String::from_utf8_lossy(&r.key),
                    String::from_utf8_lossy(&r.value),
                    r.headers.len()
                );
            }
        }
        Err(e) => println!("  records do not decode: {e}"),
    }
}

/// `log dump` of a segment in strata's first format.
fn dump_v1(bytes: &[u8], records: bool) -> anyhow::Result<()> {
    use crate::storage::batch_v1;
    let mut pos = 0usize;
    let mut count = 0u64;
    while pos < bytes.len() {
        let header = match batch_v1::BatchHeader::parse(&bytes[pos..], BATCH_BYTES_LIMIT) {
            Ok(h) if pos + h.total_len <= bytes.len() => h,
            Ok(_) | Err(_) => {
                println!("position {pos}: invalid or torn batch ({} bytes to the end)", bytes.len() - pos);
                break;
            }
        };
        let whole = &bytes[pos..pos + header.total_len];
        let crc = match batch_v1::verify_crc(&header, whole) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("BAD ({e})"),
        };
        println!(
            "batch offsets {}..={} count {} position {} size {} first_ts {} max_ts {} crc {}",
            header.base_offset,
            header.last_offset(),
            header.record_count,
            pos,
            header.total_len,
            format_ms(header.first_timestamp),
            format_ms(header.max_timestamp),
            crc
        );
        if records {
            print_records(batch_v1::decode_records(&bytes::Bytes::copy_from_slice(whole)));
        }
        count += 1;
        pos += header.total_len;
    }
    println!("{count} batch(es), {} bytes, format v1 (strata's first record format)", bytes.len());
    Ok(())
}
