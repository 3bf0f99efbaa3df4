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

/// Client commands end quietly when the reader of their output goes away
/// (`strata consume t | head -1`), as other Unix tools do: Rust ignores
/// SIGPIPE, so each print would panic with "Broken pipe" (exit 101). The
/// broker keeps ignoring it: a client that hangs up must not stop it.
fn die_quietly_on_closed_pipe() {
    #[allow(unsafe_code)]
    // SAFETY: restores the default disposition of one signal before any
    // other thread exists; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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

/// Logs to stderr (text or JSON, filtered by `RUST_LOG`), plus OTLP span
/// export when `otlp` (see `strata::telemetry`).
fn init_logging(
    runtime: &tokio::runtime::Runtime,
    format: strata::cli::LogFormat,
    filter: tracing_subscriber::EnvFilter,
    otlp: bool,
) -> Option<strata::telemetry::Exporter> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // A log line that cannot be written is dropped: the default reports
        // it with eprintln!, which panics when stderr is gone.
        .log_internal_errors(false);
    let fmt = match format {
        strata::cli::LogFormat::Json => fmt.json().with_current_span(false).with_filter(filter).boxed(),
        strata::cli::LogFormat::Text => {
            fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter).boxed()
        }
    };
    let registry = tracing_subscriber::registry().with(fmt);
    if !otlp {
        registry.init();
        return None;
    }
    let _inside = runtime.enter();
    match strata::telemetry::otlp_layer("strata") {
        Ok((layer, exporter)) => {
            registry.with(layer).init();
            Some(exporter)
        }
        Err(e) => {
            registry.init();
            tracing::error!(error = %format!("{e:#}"), "cannot export spans over OTLP; going on without");
            None
        }
    }
}

fn main() -> std::process::ExitCode {
    reserve_standard_descriptors();
    tune_allocator();
    let cli = strata::cli::Cli::parse_from(strata::cli::hoist_global_flags(std::env::args_os().collect()));
    if !matches!(cli.command, strata::cli::Command::Serve(_) | strata::cli::Command::Bench { .. }) {
        die_quietly_on_closed_pipe();
    }
    // The broker logs at info by default; client tools and the bench (which
    // may embed a broker) only say something when it matters.
    let default_level = match cli.command {
        strata::cli::Command::Serve(_) => "info",
        _ => "warn",
    };
    // An invalid RUST_LOG is said, not silently replaced.
    let (filter, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (tracing_subscriber::EnvFilter::new(default_level), Some((v, e.to_string()))),
        },
        _ => (tracing_subscriber::EnvFilter::new(default_level), None),
    };
    log_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Spans go to OTLP only from the broker, and only when asked for; the
    // exporter sends from this runtime and is flushed when dropped.
    let otlp_wanted = matches!(cli.command, strata::cli::Command::Serve(_)) && strata::telemetry::export_requested();
    let _exporter = init_logging(&runtime, cli.log_format, filter, otlp_wanted);
    if let Some((value, why)) = bad_filter {
        tracing::warn!(rust_log = %value, error = %why, level = default_level, "RUST_LOG is not a valid filter; logging at the default level");
    }
    match runtime.block_on(strata::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::from(strata::cli::exit_code(&e))
        }
    }
}
