//! The `ocirelay` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ocirelay::config::{Config, DEFAULT_CONFIG};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring mirror for Docker Hub and other OCI registries.
///
/// With no arguments it serves a Docker Hub mirror on 127.0.0.1:5000.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); without it the embedded default is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Plain-HTTP listen address, replacing the config's `listen` (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a config file; errors name the line.
    Check { file: PathBuf },
    /// Print the embedded default config.
    Default,
}

/// Keeps transparent huge pages out of the process, as
/// `MIMALLOC_ALLOW_THP=0` would: with them, RSS after blob bursts was ~80
/// MiB instead of ~55 MiB at the same CPU. See `docs/design.md`, "Memory".
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only. A failure
        // (very old kernel) leaves the default, which is merely larger.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0) };
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config {
            action: ConfigAction::Default,
        }) => {
            print!("{DEFAULT_CONFIG}");
            return ExitCode::SUCCESS;
        }
        Some(Command::Config {
            action: ConfigAction::Check { file },
        }) => {
            return match Config::load(&file) {
                Ok(c) => {
                    println!(
                        "{}: ok ({} listener(s), {} registr{})",
                        file.display(),
                        c.listen.len() + c.tls_listeners.len(),
                        c.registries.len(),
                        if c.registries.len() == 1 { "y" } else { "ies" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let mut cfg = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ocirelay: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => Config::default_config(),
    };
    if !cli.listen.is_empty() {
        cfg.listen = cli.listen.clone();
    }
    if let Some(n) = cli.workers {
        cfg.workers = n;
    }
    let result = ocirelay::server::run(cfg, |bound| {
        for a in &bound.plain {
            println!("ocirelay listening on http://{a}");
        }
        for a in &bound.tls {
            println!("ocirelay listening on https://{a}");
        }
        println!("ocirelay ready");
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocirelay: {e}");
            ExitCode::FAILURE
        }
    }
}
