//! The `ocirelay` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ocirelay::config::{Config, ConfigSource, DEFAULT_CONFIG};

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
    /// Work with the content cache's directory (the config's `[cache] dir`,
    /// or `--dir`); safe beside a running mirror.
    Cache {
        /// The cache directory (default: the config's).
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Objects and bytes on disk, and the hit ratio of the mirror using it.
    Stats,
    /// Re-hash every object, drop what does not match its digest, report.
    Verify,
    /// Evict by age and/or down to a size, least recently used first.
    Prune {
        /// Keep at most this much, e.g. "50GiB" (shared tier: its
        /// `[cache.s3] max_size` by default).
        #[arg(long)]
        to: Option<String>,
        /// Drop objects unused for longer than this, e.g. "30d".
        #[arg(long)]
        older_than: Option<String>,
        /// `local` (this node's directory) or `shared` (the `[cache.s3]`
        /// bucket every node uses: run it from one place, e.g. a cron job).
        #[arg(long, default_value = "local")]
        tier: PruneTier,
        /// Shared tier: say what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pull images through the running mirror so that its cache holds them
    /// (every platform of a multi-platform image); exits non-zero unless
    /// every object was fetched and verified.
    Warm(WarmArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PruneTier {
    Local,
    Shared,
}

#[derive(Args)]
struct WarmArgs {
    /// The mirror to pull through, http://HOST:PORT or https://HOST:PORT
    /// (default: http:// and the config's first `listen` address).
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// CA certificates (PEM) to trust for an https:// mirror, besides the
    /// web PKI roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// USER:PASSWORD for the registry, for private images (better: the
    /// OCIRELAY_WARM_AUTH environment variable, which `ps` does not show).
    #[arg(long, value_name = "USER:PASSWORD")]
    user: Option<String>,
    /// Images as docker names them: alpine, alpine:3.19, library/alpine,
    /// ghcr.io/owner/img:tag, quay.io/x/y@sha256:...
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a config file: syntax and values, then what would go wrong on
    /// this machine (cache directory, certificates and keys, colliding
    /// hosts); every problem names its line.
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
            return match ocirelay::config::check::check_file(&file) {
                Ok((c, problems)) if problems.is_empty() => {
                    println!(
                        "{}: ok ({} listener(s), {} registr{})",
                        file.display(),
                        c.listen.len() + c.proxy_protocol_listen.len() + c.tls_listeners.len(),
                        c.registries.len(),
                        if c.registries.len() == 1 { "y" } else { "ies" }
                    );
                    ExitCode::SUCCESS
                }
                Ok((_, problems)) => {
                    for p in &problems {
                        eprintln!("{}: {p}", file.display());
                    }
                    eprintln!("{}: {} problem(s)", file.display(), problems.len());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Cache {
            dir,
            action: CacheAction::Warm(args),
        }) => return warm_command(&cli.config, &cli.listen, dir, args),
        Some(Command::Cache {
            action:
                CacheAction::Prune {
                    to,
                    older_than,
                    tier: PruneTier::Shared,
                    dry_run,
                },
            ..
        }) => return prune_shared(&cli.config, to, older_than, dry_run),
        Some(Command::Cache { dir, action }) => return cache_command(&cli.config, dir, action),
        None => {}
    }
    let source = ConfigSource {
        path: cli.config.clone(),
        listen: cli.listen.clone(),
        workers: cli.workers,
    };
    let cfg = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ocirelay: {source}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls_proxied: Vec<bool> = cfg.tls_listeners.iter().map(|l| l.proxy_protocol).collect();
    let result = ocirelay::server::run(source, cfg, |bound| {
        for a in &bound.plain {
            println!("ocirelay listening on http://{a}");
        }
        for a in &bound.proxy_protocol {
            println!("ocirelay listening on http://{a} (PROXY protocol)");
        }
        for (a, proxied) in bound.tls.iter().zip(tls_proxied) {
            let proxied = if proxied { " (PROXY protocol)" } else { "" };
            println!("ocirelay listening on https://{a}{proxied}");
        }
        if let Some(a) = &bound.metrics {
            println!("ocirelay metrics on http://{a}/metrics");
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

/// `ocirelay cache ...`
fn cache_command(config: &Option<PathBuf>, dir: Option<PathBuf>, action: CacheAction) -> ExitCode {
    use ocirelay::cache::admin;
    use ocirelay::config::{default_cache_dir, parse_duration, parse_size};
    let dir = match dir {
        Some(d) => d,
        None => {
            let cfg = match config {
                Some(p) => Config::load(p),
                None => Ok(Config::default_config()),
            };
            match cfg {
                Ok(c) => c.cache.map_or_else(default_cache_dir, |c| c.dir),
                Err(e) => {
                    eprintln!("ocirelay: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    if !dir.join("blobs").is_dir() {
        eprintln!("ocirelay: {} is not a cache directory", dir.display());
        return ExitCode::FAILURE;
    }
    match action {
        CacheAction::Stats => print!("{}", admin::stats_report(&dir)),
        CacheAction::Verify => match admin::verify(&dir) {
            Ok(v) => println!(
                "{}: {} objects match their digest, {} dropped",
                dir.display(),
                v.good,
                v.dropped
            ),
            Err(e) => {
                eprintln!("ocirelay: verify {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        },
        CacheAction::Prune { to, older_than, .. } => {
            let to = match to.as_deref().map(|t| parse_size(t).ok_or(t)) {
                Some(Err(t)) => {
                    eprintln!("ocirelay: --to {t:?} is not a size (e.g. \"50GiB\")");
                    return ExitCode::FAILURE;
                }
                Some(Ok(n)) => Some(n),
                None => None,
            };
            let age = match older_than.as_deref().map(|t| parse_duration(t).ok_or(t)) {
                Some(Err(t)) => {
                    eprintln!("ocirelay: --older-than {t:?} is not a duration (e.g. \"30d\")");
                    return ExitCode::FAILURE;
                }
                Some(Ok(d)) => Some(d),
                None => None,
            };
            if to.is_none() && age.is_none() {
                eprintln!("ocirelay: cache prune needs --to SIZE and/or --older-than AGE");
                return ExitCode::FAILURE;
            }
            let (n, bytes) = admin::prune(&dir, to, age);
            println!("{}: removed {n} objects ({bytes} bytes)", dir.display());
        }
        CacheAction::Warm(_) => unreachable!("main dispatches `cache warm` to warm_command"),
    }
    ExitCode::SUCCESS
}

/// `ocirelay cache warm`: through the mirror, which owns the cache
/// directory (so `--dir` has no meaning here).
/// `ocirelay cache prune --tier shared`: the `[cache.s3]` bucket, down to
/// `--to` (else the table's `max_size`) and/or by `--older-than`.
fn prune_shared(
    config: &Option<PathBuf>,
    to: Option<String>,
    older_than: Option<String>,
    dry: bool,
) -> ExitCode {
    use ocirelay::cache::s3::prune;
    use ocirelay::config::{parse_duration, parse_size};
    let cfg = match config {
        Some(p) => Config::load(p),
        None => Ok(Config::default_config()),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ocirelay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(s3) = cfg.cache.as_ref().and_then(|c| c.s3.as_ref()) else {
        eprintln!("ocirelay: --tier shared needs a [cache.s3] table in the config (--config FILE)");
        return ExitCode::FAILURE;
    };
    let to = match to.as_deref().map(|t| parse_size(t).ok_or(t)) {
        Some(Err(t)) => {
            eprintln!("ocirelay: --to {t:?} is not a size (e.g. \"2TiB\")");
            return ExitCode::FAILURE;
        }
        Some(Ok(n)) => Some(n),
        None => s3.max_size,
    };
    let older_than = match older_than.as_deref().map(|t| parse_duration(t).ok_or(t)) {
        Some(Err(t)) => {
            eprintln!("ocirelay: --older-than {t:?} is not a duration (e.g. \"30d\")");
            return ExitCode::FAILURE;
        }
        Some(Ok(d)) => Some(d),
        None => None,
    };
    let policy = prune::Policy { to, older_than };
    match prune::run_command(s3, cfg.timeouts, policy, dry) {
        Ok(p) => {
            println!(
                "{}/{}: {} {} objects ({} bytes) and {} records; {} objects ({} bytes) kept",
                s3.endpoint.origin,
                s3.bucket,
                if dry { "would remove" } else { "removed" },
                p.objects,
                p.bytes,
                p.records,
                p.kept_objects,
                p.kept_bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ocirelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn warm_command(
    config: &Option<PathBuf>,
    listen: &[SocketAddr],
    dir: Option<PathBuf>,
    args: WarmArgs,
) -> ExitCode {
    use ocirelay::cache::warm;
    if dir.is_some() {
        eprintln!(
            "ocirelay: cache warm goes through the mirror; --dir does not apply (use --mirror)"
        );
        return ExitCode::FAILURE;
    }
    let mirror = match &args.mirror {
        Some(url) => warm::parse_mirror(url),
        None if !listen.is_empty() => warm::default_mirror(listen),
        None => match config {
            Some(p) => Config::load(p)
                .map_err(|e| warm::WarmError::Mirror(format!("{}: {e}", p.display())))
                .and_then(|c| warm::default_mirror(&c.listen)),
            None => warm::default_mirror(&Config::default_config().listen),
        },
    };
    let mirror = match mirror {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ocirelay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = warm::Options {
        mirror,
        ca_file: args.ca_file,
        user: args
            .user
            .or_else(|| std::env::var("OCIRELAY_WARM_AUTH").ok())
            .filter(|u| !u.is_empty()),
    };
    let result = warm::run(&opts, &args.images, |image| {
        for e in &image.failures {
            eprintln!("ocirelay: {}: {e}", image.image);
        }
        println!("{}", image.line());
    });
    match result {
        Ok(summary) => {
            println!("{}", summary.line());
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ocirelay: {e}");
            ExitCode::FAILURE
        }
    }
}
