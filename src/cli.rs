//! The subcommands behind `main.rs`: `check`, `run` and `demo`, each returning an exit code.

use std::path::Path;
use std::process::ExitCode;

use crate::config;

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The main runtime: the dispatcher, webhook, SMS and e-mail attempts, the admin API. See
/// [`main_workers`] for its size; `TOKIO_WORKER_THREADS` in the environment overrides it.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Read here rather than by tokio, which panics on a value it cannot use.
    let workers = match std::env::var_os("TOKIO_WORKER_THREADS") {
        None => {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            main_workers(cores)
        }
        Some(value) => match value.to_str().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                return Err(std::io::Error::other(format!(
                    "TOKIO_WORKER_THREADS must be a whole number of threads, 1 or more; got {value:?}"
                )));
            }
        },
    };
    builder.worker_threads(workers);
    builder.enable_all().build()
}

/// Worker threads of the main runtime on a machine with `cores`: one fewer than the cores, at
/// least one. The processor, the journal writer, the carriers' sessions and the records
/// store's worker have threads of their own and keep about one core busy between them at full
/// load; a worker per core on top of them made the workers hand tasks to each other, wake
/// each other and park again. On two cores, one worker instead of two took the CPU per
/// delivered message from about 75 to 60 µs (default webhook) and from 45 to 35 (pipelined):
/// BENCHMARKS.md, eighth session, where it also says why the first try (seventh session) had
/// to be reverted (the processor's pace window, see `processor::PACE_WINDOW`).
fn main_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// `vmnd check --config FILE`: every problem as `FILE:LINE:COL: message`; exit 1 if any.
pub fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok((config, warnings)) => {
            for w in &warnings {
                crate::out!("{w}");
            }
            crate::out!(
                "{}: ok ({} carriers, {} webhooks, {} numbers)",
                path.display(),
                config.carriers.len(),
                config.webhooks.len(),
                config.numbers.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                crate::out!("{p}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `vmnd run --config FILE`: a bad config is refused before anything starts.
pub fn run(path: &Path) -> ExitCode {
    init_logging("info");
    let config = match config::load(path) {
        Ok((config, warnings)) => {
            for w in &warnings {
                tracing::warn!("{w}");
            }
            config
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(crate::daemon::run(config)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmnd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `vmnd demo`: see [`crate::demo`].
pub fn demo(once: bool) -> ExitCode {
    init_logging("warn");
    let outcome = runtime()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(crate::demo::run(once)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmnd demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `vmnd route`'s arguments.
#[derive(Debug, Default)]
pub struct RouteArgs {
    pub config: std::path::PathBuf,
    pub to: String,
    pub from: String,
    /// RFC 3339; default now.
    pub at: Option<String>,
    /// Explain as this tenant sees a shared number.
    pub tenant: Option<String>,
    pub json: bool,
    pub text: String,
}

/// `vmnd route`: explains, with no side effects, what the message would trigger.
pub fn route(args: &RouteArgs) -> ExitCode {
    let config = match config::load(&args.config) {
        Ok((config, _)) => config,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let at = match &args.at {
        None => chrono::Utc::now(),
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.with_timezone(&chrono::Utc),
            Err(e) => {
                eprintln!(
                    "--at {text:?}: not an RFC 3339 time ({e}); e.g. 2026-12-31T23:59:59+05:30"
                );
                return ExitCode::from(2);
            }
        },
    };
    let router = crate::routing::router::Router::new(&config);
    let explanation = crate::actions::explain(
        &router,
        &args.to,
        &args.from,
        &args.text,
        at,
        args.tenant.as_deref(),
    );
    if args.json {
        crate::out!(
            "{}",
            serde_json::to_string_pretty(&explanation).unwrap_or_default()
        );
    } else {
        print!("{explanation}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_runtime_leaves_a_core_to_the_dedicated_threads() {
        assert_eq!(main_workers(0), 1);
        assert_eq!(main_workers(1), 1);
        assert_eq!(main_workers(2), 1);
        assert_eq!(main_workers(8), 7);
    }
}
