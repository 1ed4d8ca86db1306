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
/// `MIMALLOC_ALLOW_THP=0` would (mimalloc reads that only at process start,
/// before `main`; an operator who sets it decides instead). mimalloc asks
/// for huge pages on its arenas (`MADV_HUGEPAGE`), and a huge page stays
/// resident whole while any 4 KiB of it is in use, and khugepaged collapses
/// ranges mimalloc has purged back into resident huge pages. Measured after
/// two bursts of 32 concurrent 1 MiB blob relays: RSS ~80 MiB with huge
/// pages, ~55 MiB without (idle: 18 vs 6 MiB); CPU per GiB relayed did not
/// change. A proxy's heap is small and its bulk data sits in kernel socket
/// buffers. The prctl covers systems with THP `always`; mimalloc's `no_thp`
/// feature (Cargo.toml) drops its `MADV_HUGEPAGE` requests, which on
/// `madvise` systems also covers what is allocated before `main`.
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
