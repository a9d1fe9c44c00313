//! The `vmnd` binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  vmnd run --config FILE     run the daemon in the foreground
  vmnd check --config FILE   validate FILE; print every problem as FILE:LINE:COL: message
  vmnd route --config FILE --to VMN --from MSISDN [--at TIME] [--tenant T] [--json] TEXT
                             explain what a message would trigger, and why other rules did not match
  vmnd demo [--once]         everything on loopback with a simulated carrier (--once: exit after the script)
  vmnd --version";

fn main() -> ExitCode {
    // `args()` panics on an argument that is not UTF-8: say so instead.
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
    {
        Ok(args) => args,
        Err(arg) => {
            eprintln!("argument {arg:?} is not UTF-8\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let command = args.first().map(String::as_str);
    let config_path = || -> Result<PathBuf, String> {
        match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("--config"), Some(path)) if args.len() == 3 => Ok(PathBuf::from(path)),
            _ => Err(format!("expected --config FILE\n{USAGE}")),
        }
    };
    let result = match command {
        Some("check") => config_path().map(|p| vmnd::cli::check(&p)),
        Some("run") => config_path().map(|p| vmnd::cli::run(&p)),
        Some("route") => route_args(&args[1..]).map(|r| vmnd::cli::route(&r)),
        Some("demo") => match args.get(1).map(String::as_str) {
            None => Ok(vmnd::cli::demo(false)),
            Some("--once") if args.len() == 2 => Ok(vmnd::cli::demo(true)),
            _ => Err(format!("unexpected arguments\n{USAGE}")),
        },
        Some("--version") | Some("-V") => {
            vmnd::out!("vmnd {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Some("--help") | Some("-h") | Some("help") => {
            vmnd::out!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(USAGE.to_string()),
    };
    result.unwrap_or_else(|message| {
        eprintln!("{message}");
        ExitCode::from(2)
    })
}

/// `route`'s flags, in any order; the words left over are the message text.
fn route_args(args: &[String]) -> Result<vmnd::cli::RouteArgs, String> {
    let mut r = vmnd::cli::RouteArgs::default();
    let mut text = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--config" => r.config = PathBuf::from(value("--config")?),
            "--to" => r.to = value("--to")?,
            "--from" => r.from = value("--from")?,
            "--at" => r.at = Some(value("--at")?),
            "--tenant" => r.tenant = Some(value("--tenant")?),
            "--json" => r.json = true,
            "--" => text.extend(it.by_ref().cloned()),
            _ => text.push(arg.clone()),
        }
    }
    if r.config.as_os_str().is_empty() || r.to.is_empty() || r.from.is_empty() {
        return Err(format!("route needs --config, --to and --from\n{USAGE}"));
    }
    r.text = text.join(" ");
    Ok(r)
}
