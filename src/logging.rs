//! The node's log output on stderr: every line carries the node id, so several nodes sharing a terminal or a log
//! collector can be told apart.
//!
//! - `console` ([`Console`]): `2026-01-02T03:04:05.123456Z  INFO node=1 message key=value`; colours only on a
//!   terminal. Lines forwarded from the nats-server child read `... node=1 nats-server: text`. The continuation
//!   lines of a multi-line message are prefixed with the node id too.
//! - `json` ([`Json`]): one JSON object per line with `timestamp`, `level`, `node_id`, `target`, `message`, the
//!   event's fields, `spans` when inside spans, and `"source": "nats-server"` for the child's lines.
//!
//! Both are [`FormatEvent`]s for tracing-subscriber's `fmt` layer; [`init`] installs the global subscriber.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LoggingConfig};

/// The target of the events forwarded from the nats-server child's output.
pub const NATS_TARGET: &str = "nats-server";

/// Installs the global subscriber: `HARMONYLITE_LOG` as the filter if set, else ours at info (debug when
/// `verbose`) and other crates at warn. A one-shot `command` prints its answer on stdout, so its log says
/// only warnings and errors unless `verbose` (then everything down to debug).
pub fn init(cfg: &LoggingConfig, node_id: u64, verbose: bool, command: bool) {
    use tracing_subscriber::EnvFilter;
    let ours = match (verbose, command) {
        (true, _) => "debug",
        (false, true) => "warn",
        (false, false) => "info",
    };
    let filter = EnvFilter::try_from_env("HARMONYLITE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,harmonylite={ours},nats={ours}")));
    // Colours only on a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match cfg.format {
        LogFormat::Json => builder.event_format(Json::new(node_id)).init(),
        LogFormat::Console => builder.event_format(Console::new(node_id)).init(),
    }
    tracing::debug!(node_id, format = ?cfg.format, "logging initialised");
}

/// Human-readable lines: timestamp, level, `node=<id>`, then what tracing's default formatter writes.
#[derive(Debug)]
pub struct Console {
    node_id: u64,
    rest: Format<Full, ()>,
}

impl Console {
    pub fn new(node_id: u64) -> Console {
        Console {
            node_id,
            rest: Format::<Full, SystemTime>::default()
                .without_time()
                .with_level(false)
                .with_target(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Console
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut writer)?;
        let level = *event.metadata().level();
        if writer.has_ansi_escapes() {
            write!(writer, " {}{level:>5}\x1b[0m", colour(level))?;
        } else {
            write!(writer, " {level:>5}")?;
        }
        let prefix = format!("node={}", self.node_id);
        write!(writer, " {prefix} ")?;
        if event.metadata().target() == NATS_TARGET {
            writer.write_str("nats-server: ")?;
        }
        let mut lines = Continued {
            out: &mut writer,
            prefix: &prefix,
            pending_newline: false,
        };
        self.rest
            .format_event(ctx, Writer::new(&mut lines), event)?;
        if lines.pending_newline {
            writer.write_char('\n')?;
        }
        Ok(())
    }
}

fn colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        _ => "\x1b[35m",
    }
}

/// Passes text through, starting every line after the first with `  <prefix> | `; the last newline is held
/// back (`pending_newline`) so that it does not open an empty continuation line.
struct Continued<'a, 'w> {
    out: &'a mut Writer<'w>,
    prefix: &'a str,
    pending_newline: bool,
}

impl fmt::Write for Continued<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                if self.pending_newline {
                    write!(self.out, "\n  {} | ", self.prefix)?;
                }
                self.pending_newline = true;
            }
            if !part.is_empty() {
                if self.pending_newline {
                    write!(self.out, "\n  {} | ", self.prefix)?;
                    self.pending_newline = false;
                }
                self.out.write_str(part)?;
            }
        }
        Ok(())
    }
}

/// One JSON object per line.
#[derive(Debug)]
pub struct Json {
    node_id: u64,
}

impl Json {
    pub fn new(node_id: u64) -> Json {
        Json { node_id }
    }
}

/// Keys [`Json`] sets itself; an event field with one of these names is written as `fields.<name>` (unless it
/// has the same value).
const RESERVED: [&str; 7] = [
    "timestamp",
    "level",
    "node_id",
    "target",
    "source",
    "spans",
    "message",
];

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut obj = serde_json::Map::new();
        obj.insert("timestamp".into(), timestamp.into());
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("node_id".into(), self.node_id.into());
        obj.insert("target".into(), meta.target().into());
        if meta.target() == NATS_TARGET {
            obj.insert("source".into(), NATS_TARGET.into());
        }
        if let Some(scope) = ctx.event_scope() {
            let names: Vec<serde_json::Value> =
                scope.from_root().map(|s| s.name().into()).collect();
            obj.insert("spans".into(), names.into());
        }
        let mut fields = JsonFields {
            obj: &mut obj,
            message: None,
        };
        event.record(&mut fields);
        let message = fields.message.take().unwrap_or_default();
        obj.insert("message".into(), message.into());
        writeln!(writer, "{}", serde_json::Value::Object(obj))
    }
}

struct JsonFields<'a> {
    obj: &'a mut serde_json::Map<String, serde_json::Value>,
    message: Option<String>,
}

impl JsonFields<'_> {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else if RESERVED.contains(&name) {
            // The same value as ours (typically `node_id`) is said once.
            if self.obj.get(name) != Some(&value) {
                self.obj.insert(format!("fields.{name}"), value);
            }
        } else {
            self.obj.insert(name.to_string(), value);
        }
    }
}

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// The console lines `f` logs with node id 1, for unit tests of what other modules log.
#[cfg(test)]
pub(crate) fn captured(f: impl FnOnce()) -> String {
    let buf = tests::Buf::default();
    let b = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(Level::TRACE)
        .with_writer(move || b.clone())
        .event_format(Console::new(1))
        .finish();
    tracing::subscriber::with_default(sub, f);
    buf.text()
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    pub(super) struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        pub(super) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn events() {
        tracing::info!(shard = 2, stream = "s", "hello");
        tracing::warn!(target: NATS_TARGET, "Error trying to connect to route");
        let span = tracing::info_span!("outer", x = 1);
        let _g = span.enter();
        tracing::error!(node_id = 9u64, ok = true, "two\nlines");
        tracing::info!(node_id = 7u64, "same id");
    }

    #[test]
    fn console_lines_carry_the_node_id() {
        let buf = Buf::default();
        let b = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || b.clone())
            .event_format(Console::new(7))
            .finish();
        tracing::subscriber::with_default(sub, events);
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].ends_with("  INFO node=7 hello shard=2 stream=\"s\""),
            "{text}"
        );
        assert!(
            lines[1].ends_with("  WARN node=7 nats-server: Error trying to connect to route"),
            "{text}"
        );
        assert!(lines[2].contains(" ERROR node=7 outer{x=1}: two"), "{text}");
        assert_eq!(lines[3], "  node=7 | lines node_id=9 ok=true", "{text}");
        assert!(lines.iter().all(|l| l.contains("node=7")));
        assert!(lines[0].chars().next().unwrap().is_ascii_digit());
    }

    #[test]
    fn json_lines_are_objects_with_the_node_id() {
        let buf = Buf::default();
        let b = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || b.clone())
            .event_format(Json::new(7))
            .finish();
        tracing::subscriber::with_default(sub, events);
        let text = buf.text();
        let objs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(objs.len(), 4, "{text}");
        for o in &objs {
            assert_eq!(o["node_id"], 7, "{o}");
            assert!(o["timestamp"].as_str().unwrap().ends_with('Z'), "{o}");
        }
        assert_eq!(objs[0]["level"], "INFO");
        assert_eq!(objs[0]["message"], "hello");
        assert_eq!(objs[0]["shard"], 2);
        assert_eq!(objs[0]["stream"], "s");
        assert!(
            objs[0]["target"]
                .as_str()
                .unwrap()
                .starts_with("harmonylite")
        );
        assert!(objs[0].get("source").is_none());
        assert_eq!(objs[1]["source"], "nats-server");
        assert_eq!(objs[1]["level"], "WARN");
        assert_eq!(objs[2]["message"], "two\nlines");
        assert_eq!(objs[2]["fields.node_id"], 9);
        assert_eq!(objs[2]["ok"], true);
        assert_eq!(objs[2]["spans"], serde_json::json!(["outer"]));
        assert!(objs[3].get("fields.node_id").is_none(), "{}", objs[3]);
    }
}
