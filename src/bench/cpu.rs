//! CPU seconds per GB moved, for every bench summary (`cpu_s_per_gb`): user
//! plus system time of the broker process from `/proc/PID/stat` (found by
//! the port it listens on, so any broker on this machine: strata, Kafka,
//! Redpanda), or of this whole process with `--embedded`. On shared
//! machines it is steadier than throughput, and it is what a user pays.

use std::path::Path;

/// Where the CPU time is read, and its reading at the start.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    /// `None`: this process (the embedded broker and the load together).
    pid: Option<u32>,
    pub scope: &'static str,
    start: Option<f64>,
    /// Log fsyncs at the start, when the broker is this process.
    fsyncs_start: Option<u64>,
}

impl CpuMeter {
    /// Starts measuring the broker behind `server` (a URL or host:port), or
    /// this process when there is none. A broker that is not a local
    /// process (another machine, no /proc) is measured as nothing.
    pub fn begin(server: Option<&str>) -> CpuMeter {
        let (pid, scope) = match server {
            None => (None, "process"),
            Some(s) => match port_of(s).and_then(listening_pid) {
                // A broker this process embeds (bench limits): the load is in it too.
                Some(pid) if pid == std::process::id() => (None, "process"),
                Some(pid) => (Some(pid), "broker"),
                None => (Some(0), "unknown"),
            },
        };
        let fsyncs_start = pid.is_none().then(crate::metrics::fsyncs);
        let mut m = CpuMeter { pid, scope, start: None, fsyncs_start };
        m.start = m.seconds();
        m
    }

    /// Log fsyncs the broker ran since [`CpuMeter::begin`], when it runs in
    /// this process (`--embedded`, `bench limits`); `None` for another one.
    pub fn fsyncs(&self) -> Option<u64> {
        Some(crate::metrics::fsyncs() - self.fsyncs_start?)
    }

    fn seconds(&self) -> Option<f64> {
        match self.pid {
            Some(0) => None,
            Some(pid) => cpu_seconds(&Path::new("/proc").join(pid.to_string()).join("stat")),
            None => cpu_seconds(Path::new("/proc/self/stat")),
        }
    }

    /// CPU seconds since [`CpuMeter::begin`].
    pub fn used(&self) -> Option<f64> {
        Some(self.seconds()? - self.start?)
    }
}

/// utime + stime of a `/proc/PID/stat`, in seconds.
fn cpu_seconds(stat: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11, 12.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    #[allow(unsafe_code)]
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// The port of `http://host:port`, `host:port` or `[::1]:port`.
fn port_of(server: &str) -> Option<u16> {
    let s = server.split("://").last()?.trim_end_matches('/');
    s.rsplit(':').next()?.parse().ok()
}

/// The process with a TCP socket listening on `port` (any address).
fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex; state 0A is LISTEN; inode is field 9.
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "0A" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// CPU seconds per GB of `bytes`.
pub fn per_gb(seconds: Option<f64>, bytes: u64) -> Option<f64> {
    let s = seconds?;
    (bytes > 0).then(|| s / (bytes as f64 / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_urls_and_addresses() {
        assert_eq!(port_of("http://127.0.0.1:50051"), Some(50051));
        assert_eq!(port_of("localhost:9092"), Some(9092));
        assert_eq!(port_of("http://[::1]:7/"), Some(7));
        assert_eq!(port_of("nohost"), None);
    }

    #[test]
    fn the_process_listening_on_a_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_pid(port), Some(std::process::id()));
        let meter = CpuMeter::begin(Some(&format!("http://127.0.0.1:{port}")));
        assert_eq!(meter.scope, "process", "a listener of this process is this process");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(meter.used().is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn per_gb_needs_bytes_and_a_reading() {
        assert_eq!(per_gb(Some(2.0), 1_000_000_000), Some(2.0));
        assert_eq!(per_gb(None, 5), None);
        assert_eq!(per_gb(Some(1.0), 0), None);
    }
}
