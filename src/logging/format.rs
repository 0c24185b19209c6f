//! The line format: tracing-subscriber's own (`Full` text, or JSON with the event's fields
//! flattened) for every event, with the access line written field by field.
//!
//! The access line is the one event of every request, and tracing-subscriber's formatters
//! are general: each field name goes through ANSI styling (a no-op without colours, but
//! formatted all the same), each value through `fmt::Debug`, the JSON timestamp through a
//! `String` of its own. That made a line cost 17,000 (text) and 23,000 (JSON) instructions,
//! half as much again as forwarding the request (callgrind, 1 KiB pass-through at `info`).
//! Here the access line is written straight into the line: the same bytes, field by field
//! (tests compare the two formatters' lines). Any other event, an access line inside a span
//! or with colours on, goes to tracing-subscriber's formatter.

use std::fmt::{self, Write as _};
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::ser::{CompactFormatter, Formatter as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The access line's target (`server::observe`).
pub(crate) const ACCESS_TARGET: &str = "offload::access";

/// The last second humantime's RFC 3339 formatter takes: 9999-12-31T23:59:59Z.
const LAST_FORMATTED_SECOND: u64 = 253_402_300_799;

/// `default` (tracing-subscriber's formatter, text or JSON as `json` says) with the access
/// line written directly.
pub(super) struct EventFormat<D> {
    default: D,
    json: bool,
}

impl<D> EventFormat<D> {
    pub(super) fn text(default: D) -> EventFormat<D> {
        EventFormat {
            default,
            json: false,
        }
    }

    pub(super) fn json(default: D) -> EventFormat<D> {
        EventFormat {
            default,
            json: true,
        }
    }
}

impl<S, N, D> FormatEvent<S, N> for EventFormat<D>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    D: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Colours are text's only (the JSON format has none).
        let plain = is_plain_access_line(event)
            && (self.json || !writer.has_ansi_escapes())
            && event.parent().is_none()
            && ctx.lookup_current().is_none();
        let now = plain.then(SystemTime::now).filter(|&now| formattable(now));
        match now {
            None => self.default.format_event(ctx, writer, event),
            Some(now) if self.json => json_line(&mut writer, event, now),
            Some(now) => text_line(&mut writer, event, now),
        }
    }
}

/// An access line whose fields are all written the plain way: none that tracing-subscriber
/// treats apart (`message`, raw identifiers, `log.` fields of the `log` crate's records).
fn is_plain_access_line(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    meta.target() == ACCESS_TARGET
        && meta.fields().iter().all(|field| {
            let name = field.name();
            name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
        })
}

/// Whether humantime formats `now` (it takes no time before 1970, nor past 9999).
fn formattable(now: SystemTime) -> bool {
    now.duration_since(UNIX_EPOCH)
        .is_ok_and(|since| since.as_secs() <= LAST_FORMATTED_SECOND)
}

/// As `Format<Full>` writes it without colours: `{time} {level:>5} {target}: {fields}`.
fn text_line(w: &mut Writer<'_>, event: &Event<'_>, now: SystemTime) -> fmt::Result {
    let meta = event.metadata();
    write!(w, "{} ", humantime::format_rfc3339_micros(now))?;
    w.write_str(padded_level(*meta.level()))?;
    w.write_char(' ')?;
    w.write_str(meta.target())?;
    w.write_str(": ")?;
    let mut fields = TextFields {
        w: w.by_ref(),
        first: true,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    w.write_char('\n')
}

/// tracing-subscriber's level names, right-aligned in five columns.
fn padded_level(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// `name=value` pairs as tracing-subscriber's `DefaultVisitor` writes them: strings quoted
/// as `fmt::Debug` quotes them, numbers and booleans bare, the rest by `fmt::Debug`.
struct TextFields<'a> {
    w: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl TextFields<'_> {
    /// `name=`, after a space unless it is the first field.
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.w.write_char(' ')?;
        }
        self.w.write_str(field.name())?;
        self.w.write_char('=')
    }

    fn record(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| value(&mut self.w));
        }
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, |w| write_debug_str(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, |w| write_number(w, |f, out| f.write_u64(out, value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, |w| write_number(w, |f, out| f.write_i64(out, value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, |w| match debug_digits_agree(value) {
            true => write_number(w, |f, out| f.write_f64(out, value)),
            false => write!(w, "{value:?}"),
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |w| write!(w, "{value:?}"));
    }
}

/// Whether serde_json writes `value` as `{:?}` does: both write the shortest digits that
/// read back as the same number, in plain decimal with at least one digit after the point,
/// between 1e-4 and 1e9 (a test compares them) and for zero; outside, Rust turns to `1e-5`
/// and `1e16` forms at bounds of its own. The access line's milliseconds are in range.
fn debug_digits_agree(value: f64) -> bool {
    value == 0.0 || (1e-4..1e9).contains(&value.abs())
}

/// `value` as `{:?}` writes it: quoted, with nothing to escape in the common case.
fn write_debug_str(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        w.write_char('"')?;
        w.write_str(value)?;
        w.write_char('"')
    } else {
        write!(w, "{value:?}")
    }
}

/// As tracing-subscriber's JSON format writes it with `flatten_event(true)`:
/// `{"timestamp":…,"level":…,<fields>,"target":…}`.
fn json_line(w: &mut Writer<'_>, event: &Event<'_>, now: SystemTime) -> fmt::Result {
    let meta = event.metadata();
    write!(
        w,
        "{{\"timestamp\":\"{}\",\"level\":\"{}\"",
        humantime::format_rfc3339_micros(now),
        meta.level().as_str()
    )?;
    let mut fields = JsonFields {
        w: w.by_ref(),
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    w.write_str(",\"target\":")?;
    write_json_str(w, meta.target())?;
    w.write_str("}\n")
}

/// `,"name":value` entries as tracing-serde writes them through serde_json.
struct JsonFields<'a> {
    w: Writer<'a>,
    result: fmt::Result,
}

impl JsonFields<'_> {
    fn record(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .w
                .write_char(',')
                .and_then(|()| write_json_str(&mut self.w, field.name()))
                .and_then(|()| self.w.write_char(':'))
                .and_then(|()| value(&mut self.w));
        }
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, |w| write_json_str(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, |w| write_number(w, |f, out| f.write_u64(out, value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, |w| write_number(w, |f, out| f.write_i64(out, value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json writes `null` for a number that is not finite.
        self.record(field, |w| match value.is_finite() {
            true => write_number(w, |f, out| f.write_f64(out, value)),
            false => w.write_str("null"),
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |w| {
            w.write_char('"')?;
            write!(JsonEscaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// A number as serde_json writes it, in its own digits (decimal integers; floats as short as
/// they round-trip, `1e+300` style), through its formatter onto the stack.
fn write_number(
    w: &mut Writer<'_>,
    write: impl FnOnce(&mut CompactFormatter, &mut &mut [u8]) -> io::Result<()>,
) -> fmt::Result {
    const ROOM: usize = 40;
    let mut digits = [0u8; ROOM];
    let written = {
        let mut rest = &mut digits[..];
        write(&mut CompactFormatter, &mut rest).map_err(|_| fmt::Error)?;
        ROOM - rest.len()
    };
    let number = std::str::from_utf8(&digits[..written]).map_err(|_| fmt::Error)?;
    w.write_str(number)
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn write_json_str(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscaped(w).write_str(value)?;
    w.write_char('"')
}

fn needs_json_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Writes what it is given escaped for the inside of a JSON string, as serde_json does:
/// `"`, `\` and control characters below U+0020; everything else as it is.
struct JsonEscaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for JsonEscaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.bytes().any(needs_json_escape) {
            return self.0.write_str(s);
        }
        let mut clean = 0;
        for (at, byte) in s.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..0x20 => "",
                _ => continue,
            };
            self.0.write_str(&s[clean..at])?;
            match escaped {
                "" => write!(self.0, "\\u{byte:04x}")?,
                escaped => self.0.write_str(escaped)?,
            }
            clean = at + 1;
        }
        self.0.write_str(&s[clean..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing::info;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Lines written into memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Access lines with the fields `server::observe` logs, ordinary and awkward values, a
    /// refused head's line, one inside a span, and another target's event.
    fn log_events() {
        let peer: SocketAddr = "203.0.113.7:51234".parse().unwrap();
        info!(
            target: ACCESS_TARGET,
            method = %http::Method::GET,
            path = "/wp-content/uploads/2026/12/a.jpg",
            status = 200u16,
            kind = "passthrough",
            bytes_in = 0u64,
            bytes_out = 1024u64,
            duration_ms = 0.123,
            upstream_ms = Some(0.1),
            peer = %peer,
            complete = true,
            request_id = Some("4bf92f3577b34da6"),
        );
        info!(
            target: ACCESS_TARGET,
            method = %http::Method::from_bytes(b"PROPFIND").unwrap(),
            path = "/a\"b\\c\u{1b}d\té\u{301}",
            status = 502u16,
            kind = "upload",
            bytes_in = u64::MAX,
            bytes_out = 0u64,
            duration_ms = 0.00001,
            upstream_ms = None::<f64>,
            peer = %peer,
            complete = false,
            request_id = None::<&str>,
        );
        info!(target: ACCESS_TARGET, duration_ms = 12345.678, huge = 1e300, negative = -3i64);
        info!(target: ACCESS_TARGET, not_a_number = f64::NAN, endless = f64::INFINITY);
        info!(
            target: ACCESS_TARGET,
            method = "-",
            path = "",
            status = 408u16,
            kind = "refused",
            peer = %peer,
            reason = %"request head not complete within \"30s\"",
        );
        tracing::info_span!("request", id = 7).in_scope(|| {
            info!(target: ACCESS_TARGET, path = "/in/a/span", status = 200u16);
        });
        info!(target: "offload::other", "a message {}", 1);
    }

    /// Logs `log_events` through `layer` (which writes them where the test reads them).
    fn lines_through<L>(layer: L)
    where
        L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, log_events);
    }

    /// Each line with its timestamp replaced, after checking it is RFC 3339 with microseconds.
    fn without_timestamps(lines: &str, json: bool) -> Vec<String> {
        lines
            .lines()
            .map(|line| {
                let at = if json { "{\"timestamp\":\"".len() } else { 0 };
                let stamp = &line[at..at + 27];
                let shape = stamp.bytes().enumerate().all(|(i, b)| match i {
                    4 | 7 => b == b'-',
                    10 => b == b'T',
                    13 | 16 => b == b':',
                    19 => b == b'.',
                    26 => b == b'Z',
                    _ => b.is_ascii_digit(),
                });
                assert!(shape, "not an RFC 3339 time with microseconds: {line}");
                format!("{}<time>{}", &line[..at], &line[at + 27..])
            })
            .collect()
    }

    #[test]
    fn serde_json_writes_the_numbers_in_range_as_debug_does() {
        let mut checked = 0;
        let mut check = |value: f64| {
            if debug_digits_agree(value) {
                let json = serde_json::to_string(&value).expect("a finite number");
                assert_eq!(json, format!("{value:?}"), "{value}");
                checked += 1;
            }
        };
        // Every millisecond figure `server::observe` logs up to 2,000 s, and their negatives.
        for micros in 0..2_000_000_000u64 / 997 {
            let millis = (micros * 997) as f64 / 1000.0;
            check(millis);
            check(-millis);
        }
        // And numbers of every magnitude, from their bits.
        let mut bits: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            check(f64::from_bits(bits));
        }
        for edge in [1e-4, 1e9 - 1e-7, 0.0, -0.0, 1.0, 0.1, 0.3, 123456789.123] {
            check(edge);
        }
        assert!(checked > 4_000_000, "{checked}");
    }

    #[test]
    fn access_lines_are_the_bytes_tracing_subscribers_text_format_writes() {
        let (ours, theirs) = (Captured::default(), Captured::default());
        lines_through(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(ours.clone())
                .event_format(EventFormat::text(tracing_subscriber::fmt::format())),
        );
        lines_through(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(theirs.clone()),
        );
        let (ours, theirs) = (ours.text(), theirs.text());
        assert_eq!(ours.lines().count(), 7, "{ours}");
        assert_eq!(
            without_timestamps(&ours, false),
            without_timestamps(&theirs, false)
        );
    }

    #[test]
    fn access_lines_are_the_bytes_tracing_subscribers_json_format_writes() {
        let (ours, theirs) = (Captured::default(), Captured::default());
        lines_through(
            tracing_subscriber::fmt::layer()
                .with_writer(ours.clone())
                .fmt_fields(JsonFields::new())
                .event_format(EventFormat::json(
                    tracing_subscriber::fmt::format().json().flatten_event(true),
                )),
        );
        lines_through(
            tracing_subscriber::fmt::layer()
                .with_writer(theirs.clone())
                .json()
                .flatten_event(true),
        );
        let (ours, theirs) = (ours.text(), theirs.text());
        assert_eq!(ours.lines().count(), 7, "{ours}");
        for line in ours.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a JSON line");
        }
        assert_eq!(
            without_timestamps(&ours, true),
            without_timestamps(&theirs, true)
        );
    }
}
