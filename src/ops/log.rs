//! The event log: levelled lines on stderr, one format for every part of
//! ocirelay (`ocirelay[<worker>] <level>: <message>`). The level threshold
//! is read once from `OCIRELAY_LOG` (`error`, `warn`, `info`, `debug`;
//! default `info`). Events are rare (failures, start-up), so each is one
//! unbuffered write: it reaches the terminal even if the process dies next.
//! Control characters and line separators in a message are escaped.

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
    crate::ops::access_log::write_stderr(&event_line(level, worker, msg));
}

/// `ocirelay[<worker>] <level>: <message>\n`
fn event_line(level: Level, worker: Option<usize>, msg: fmt::Arguments<'_>) -> Vec<u8> {
    let mut line = Vec::with_capacity(128);
    let _ = match worker {
        Some(w) => write!(line, "ocirelay[{w}] {}: ", level.as_str()),
        None => write!(line, "ocirelay {}: ", level.as_str()),
    };
    // Messages carry what clients and upstreams sent (targets, error
    // texts): escaped, so that an event is always one line.
    let mut text = Vec::with_capacity(128);
    let _ = text.write_fmt(msg);
    crate::ops::escape::text_line(&mut line, &text);
    line.push(b'\n');
    line
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

    #[test]
    fn an_event_is_one_line_whatever_its_message_holds() {
        let target = "/v2/x\r\nocirelay[0] error: forged\u{2028}";
        let line = event_line(Level::Warn, Some(3), format_args!("GET {target} -> failed"));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "ocirelay[3] warn: GET /v2/x\\x0d\\x0aocirelay[0] error: forged\\u2028 -> failed\n"
        );
    }
}
