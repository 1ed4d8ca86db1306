//! The event log: levelled lines on stderr, one format for every part of
//! ocirelay (`ocirelay[<worker>] <level>: <message>`). The level threshold
//! is read once from `OCIRELAY_LOG` (`error`, `warn`, `info`, `debug`;
//! default `info`). Events are rare (failures, start-up), so each is one
//! unbuffered write: it reaches the terminal even if the process dies next.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

/// The most detailed level written.
pub fn threshold() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        std::env::var("OCIRELAY_LOG")
            .ok()
            .and_then(|v| Level::parse(&v))
            .unwrap_or(Level::Info)
    })
}

/// Whether events at `level` are written (check before building costly text).
pub fn enabled(level: Level) -> bool {
    level <= threshold()
}

/// Writes one event. `worker` is the worker's id, or `None` outside one.
pub fn event(level: Level, worker: Option<usize>, msg: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let mut line = Vec::with_capacity(128);
    let _ = match worker {
        Some(w) => write!(line, "ocirelay[{w}] {}: ", level.as_str()),
        None => write!(line, "ocirelay {}: ", level.as_str()),
    };
    let _ = line.write_fmt(msg);
    line.push(b'\n');
    crate::ops::access_log::write_stderr(&line);
}

/// `event!(Level::Warn, Some(w.id), "accept failed: {e}")`
#[macro_export]
macro_rules! event {
    ($level:expr, $worker:expr, $($arg:tt)+) => {
        $crate::ops::log::event($level, $worker, format_args!($($arg)+))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("warning"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error < Level::Debug);
    }
}
