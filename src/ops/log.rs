//! The event log: levelled lines on stderr, one format for every part of
//! ocirelay (`ocirelay[<worker>] <level>: <message>`). The threshold is the
//! config's `log_level` (applied again on every reload), unless
//! `OCIRELAY_LOG` (`error`, `warn`, `info`, `debug`) is set: the
//! environment wins, as it did before the config had a say. Events are rare
//! (failures, start-up, reloads), so each is one unbuffered write: it
//! reaches the terminal even if the process dies next. Control characters
//! and line separators in a message are escaped.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

pub use crate::config::LogLevel as Level;

/// The threshold as a number (see [`Level`]'s order); `info` until a
/// config says otherwise.
static THRESHOLD: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// The level `OCIRELAY_LOG` names, read once.
fn from_env() -> Option<Level> {
    static ENV: OnceLock<Option<Level>> = OnceLock::new();
    *ENV.get_or_init(|| {
        std::env::var("OCIRELAY_LOG")
            .ok()
            .and_then(|v| Level::parse(&v))
    })
}

/// Sets the threshold from a config's `log_level` (at start and on each
/// reload); `OCIRELAY_LOG`, when set, wins.
pub fn set_threshold(configured: Level) {
    let level = from_env().unwrap_or(configured);
    THRESHOLD.store(level as u8, Ordering::Relaxed);
}

/// The most detailed level written.
pub fn threshold() -> Level {
    if let Some(l) = from_env() {
        return l;
    }
    match THRESHOLD.load(Ordering::Relaxed) {
        0 => Level::Error,
        1 => Level::Warn,
        2 => Level::Info,
        _ => Level::Debug,
    }
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
