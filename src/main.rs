//! The `strata` binary: parses the command line and runs it. Errors print
//! one line and exit non-zero; logs go to stderr, level from `RUST_LOG`.

use std::io::Write;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc gives freed memory back to the OS 1 s after it is freed. The
/// broker and its clients free and allocate multi-MiB message buffers all
/// the time, and every fresh 2 MiB page comes back zeroed by the kernel:
/// 9% of the CPU of a page-cache consume went to that. Keeping freed memory
/// 10 s keeps it while traffic flows and still returns it when traffic
/// stops. `MIMALLOC_PURGE_DELAY` in the environment still overrides it.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: sets a documented mimalloc option; any value is valid and
        // the call is thread-safe.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000)
        };
    }
}

/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if they were
/// closed). Otherwise the first file the broker opens gets number 2, and
/// every log line lands in that file: a segment, say.
fn reserve_standard_descriptors() {
    use std::os::fd::{AsRawFd, IntoRawFd};
    for _ in 0..3 {
        let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") else { return };
        if null.as_raw_fd() > 2 {
            return;
        }
        // It took the place of a closed standard descriptor: keep it there.
        let _ = null.into_raw_fd();
    }
}

/// A panic anywhere is logged (where a panic in a background task would
/// otherwise vanish with the task), and never by a write that can panic.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        tracing::error!(%message, %location, "panic");
    }));
}

fn main() -> std::process::ExitCode {
    reserve_standard_descriptors();
    tune_allocator();
    let cli = strata::cli::Cli::parse();
    // The broker logs at info by default; client tools and the bench (which
    // may embed a broker) only say something when it matters.
    let default_level = match cli.command {
        strata::cli::Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written is dropped: the default reports
        // it with eprintln!, which panics when stderr is gone.
        .log_internal_errors(false)
        .init();
    log_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(strata::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
