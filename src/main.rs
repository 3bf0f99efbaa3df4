//! The `strata` binary: parses the command line and runs it. Errors print
//! one line and exit non-zero; logs go to stderr, level from `RUST_LOG`.

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

fn main() -> std::process::ExitCode {
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
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(strata::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
