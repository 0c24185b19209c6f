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
//!
//! The line is built in a buffer of the thread's own with plain appends and handed to the
//! subscriber's writer whole, rather than written piece by piece through it (each piece a
//! call through `dyn fmt::Write`); numbers are written by `itoa`, milliseconds with whole
//! microseconds from their integer, the timestamp's date and time once a second, and a
//! client's IPv4 address digit by digit ([`ClientAddr`]).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::SocketAddr;
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

/// What a thread's line buffer keeps between lines at most; one longer (a long path) is
/// given back rather than kept.
const LINE_KEPT: usize = 4096;

thread_local! {
    /// The access line being built on this thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The second this thread last wrote a timestamp for, and that second as RFC 3339
    /// without its end (`2026-12-06T04:30:12`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

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
        let Some(now) = now else {
            return self.default.format_event(ctx, writer, event);
        };
        in_line_buffer(|line| {
            match self.json {
                true => json_line(line, event, now)?,
                false => text_line(line, event, now)?,
            }
            writer.write_str(line)
        })
    }
}

/// `build` run on this thread's line buffer, emptied first; on a buffer of its own when
/// that one is in use (a value's formatting logged a line) or gone (the thread is exiting).
fn in_line_buffer(build: impl FnOnce(&mut String) -> fmt::Result) -> fmt::Result {
    let mut build = Some(build);
    let mut run = |line: &mut String| build.take().map_or(Ok(()), |build| build(line));
    let reused = LINE.try_with(|buffer| {
        let mut line = buffer.try_borrow_mut().ok()?;
        line.clear();
        let result = run(&mut line);
        if line.capacity() > LINE_KEPT {
            *line = String::new();
        }
        Some(result)
    });
    match reused {
        Ok(Some(result)) => result,
        _ => run(&mut String::new()),
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

/// `now` as humantime's `format_rfc3339_micros` writes it (`2026-12-06T04:30:12.000123Z`),
/// for a time [`formattable`] says it takes. The date and time are formatted once a second
/// per thread: nginx too keeps its log's time string and updates it once a second.
fn push_timestamp(line: &mut String, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).map_err(|_| fmt::Error)?;
    let second = since.as_secs();
    let pushed = SECOND.try_with(|cached| {
        let mut cached = cached.try_borrow_mut().map_err(|_| fmt::Error)?;
        if cached.0 != second {
            let (at, text) = &mut *cached;
            text.clear();
            write!(text, "{}", humantime::format_rfc3339_seconds(now))?;
            text.pop(); // the 'Z'
            *at = second;
        }
        line.push_str(&cached.1);
        Ok::<(), fmt::Error>(())
    });
    if !matches!(pushed, Ok(Ok(()))) {
        let seconds = humantime::format_rfc3339_seconds(now).to_string();
        line.push_str(seconds.trim_end_matches('Z'));
    }
    line.push('.');
    push_padded(line, since.subsec_micros(), 6);
    line.push('Z');
    Ok(())
}

/// `value` in decimal, with zeros in front up to `width` digits.
fn push_padded(line: &mut String, value: u32, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value);
    line.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    line.push_str(digits);
}

/// As `Format<Full>` writes it without colours: `{time} {level:>5} {target}: {fields}`.
fn text_line(line: &mut String, event: &Event<'_>, now: SystemTime) -> fmt::Result {
    let meta = event.metadata();
    push_timestamp(line, now)?;
    line.push(' ');
    line.push_str(padded_level(*meta.level()));
    line.push(' ');
    line.push_str(meta.target());
    line.push_str(": ");
    let mut fields = TextFields {
        line: &mut *line,
        first: true,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    line.push('\n');
    Ok(())
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
    line: &'a mut String,
    first: bool,
    /// A value's own formatting failed: the line is not written.
    result: fmt::Result,
}

impl TextFields<'_> {
    /// `name=`, after a space unless it is the first field.
    fn name(&mut self, field: &Field) -> &mut String {
        if !std::mem::take(&mut self.first) {
            self.line.push(' ');
        }
        self.line.push_str(field.name());
        self.line.push('=');
        self.line
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let line = self.name(field);
        push_debug_str(line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let line = self.name(field);
        let written = match debug_digits_agree(value) {
            true => push_f64(line, value),
            false => write!(line, "{value:?}"),
        };
        self.result = self.result.and(written);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field)
            .push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let line = self.name(field);
        let written = write!(line, "{value:?}");
        self.result = self.result.and(written);
    }
}

/// Whether serde_json writes `value` as `{:?}` does: both write the shortest digits that
/// read back as the same number, in plain decimal with at least one digit after the point,
/// between 1e-4 and 1e9 (a test compares them) and for zero; outside, Rust turns to `1e-5`
/// and `1e16` forms at bounds of its own. The access line's milliseconds are in range.
fn debug_digits_agree(value: f64) -> bool {
    value == 0.0 || (1e-4..1e9).contains(&value.abs())
}

/// A finite `value` as serde_json writes it. The access line's milliseconds (whole
/// microseconds: three decimals at most, below 1e9) are written from their integer: the
/// shortest digits that read back as such a number are its own, since two decimals of 15
/// significant digits or fewer never read back as the same `f64` (tests compare the two).
fn push_f64(line: &mut String, value: f64) -> fmt::Result {
    let thousandths = (value * 1000.0).round();
    if value.is_sign_positive() && value < 1e9 && thousandths / 1000.0 == value {
        let thousandths = thousandths as u64;
        line.push_str(itoa::Buffer::new().format(thousandths / 1000));
        line.push('.');
        // The decimals without their trailing zeros, but at least one.
        let (mut decimals, mut width) = (thousandths % 1000, 3);
        while width > 1 && decimals % 10 == 0 {
            decimals /= 10;
            width -= 1;
        }
        push_padded(line, decimals as u32, width);
        return Ok(());
    }
    push_serde_f64(line, value)
}

/// `value` as `{:?}` writes it: quoted, with nothing to escape in the common case.
fn push_debug_str(line: &mut String, value: &str) {
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        line.push('"');
        line.push_str(value);
        line.push('"');
    } else {
        let _ = write!(line, "{value:?}"); // a `String` takes every write
    }
}

/// As tracing-subscriber's JSON format writes it with `flatten_event(true)`:
/// `{"timestamp":…,"level":…,<fields>,"target":…}`.
fn json_line(line: &mut String, event: &Event<'_>, now: SystemTime) -> fmt::Result {
    let meta = event.metadata();
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, now)?;
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');
    let mut fields = JsonFields {
        line: &mut *line,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    line.push_str(",\"target\":");
    push_json_str(line, meta.target());
    line.push_str("}\n");
    Ok(())
}

/// `,"name":value` entries as tracing-serde writes them through serde_json.
struct JsonFields<'a> {
    line: &'a mut String,
    /// A value's own formatting failed: the line is not written.
    result: fmt::Result,
}

impl JsonFields<'_> {
    /// `,"name":`.
    fn name(&mut self, field: &Field) -> &mut String {
        self.line.push(',');
        push_json_str(self.line, field.name());
        self.line.push(':');
        self.line
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let line = self.name(field);
        push_json_str(line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let line = self.name(field);
        // serde_json writes `null` for a number that is not finite.
        let written = match value.is_finite() {
            true => push_f64(line, value),
            false => {
                line.push_str("null");
                Ok(())
            }
        };
        self.result = self.result.and(written);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field)
            .push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let line = self.name(field);
        line.push('"');
        let written = write!(JsonEscaped(line), "{value:?}");
        line.push('"');
        self.result = self.result.and(written);
    }
}

/// A finite `value` as serde_json writes it in general: the shortest digits that read back
/// as it, `1e+300` style for the large and small, through its formatter onto the stack.
fn push_serde_f64(line: &mut String, value: f64) -> fmt::Result {
    const ROOM: usize = 40;
    let mut digits = [0u8; ROOM];
    let written = {
        let mut rest = &mut digits[..];
        CompactFormatter
            .write_f64(&mut rest, value)
            .map_err(|_| fmt::Error)?;
        ROOM - rest.len()
    };
    let number = std::str::from_utf8(&digits[..written]).map_err(|_| fmt::Error)?;
    line.push_str(number);
    Ok(())
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn push_json_str(line: &mut String, value: &str) {
    line.push('"');
    let _ = JsonEscaped(line).write_str(value); // a `String` takes every write
    line.push('"');
}

fn needs_json_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Writes what it is given escaped for the inside of a JSON string, as serde_json does:
/// `"`, `\` and control characters below U+0020; everything else as it is.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.bytes().any(needs_json_escape) {
            self.0.push_str(s);
            return Ok(());
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
            self.0.push_str(&s[clean..at]);
            match escaped {
                "" => write!(self.0, "\\u{byte:04x}")?,
                escaped => self.0.push_str(escaped),
            }
            clean = at + 1;
        }
        self.0.push_str(&s[clean..]);
        Ok(())
    }
}

/// A client's address for the access line, as `SocketAddr`'s `Display` writes it
/// (`203.0.113.7:51234`, `[2001:db8::1]:443`; no width or precision). An IPv4 address is
/// written digit by digit and handed on in one piece: `Display` for `SocketAddrV4` formats
/// each octet and the port through the formatting machinery, ~1,300 instructions of the
/// ~7,400 an access line cost (callgrind).
pub(crate) struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SocketAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        let mut text = [0u8; "255.255.255.255:65535".len()];
        let mut rest = &mut text[..];
        let mut digits = itoa::Buffer::new();
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                rest.write_all(b".").map_err(|_| fmt::Error)?;
            }
            rest.write_all(digits.format(octet).as_bytes())
                .map_err(|_| fmt::Error)?;
        }
        rest.write_all(b":").map_err(|_| fmt::Error)?;
        rest.write_all(digits.format(v4.port()).as_bytes())
            .map_err(|_| fmt::Error)?;
        let left = rest.len();
        let written = text.len() - left;
        f.write_str(std::str::from_utf8(&text[..written]).map_err(|_| fmt::Error)?)
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
            peer = %ClientAddr(peer),
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
            peer = %ClientAddr("[2001:db8::7]:443".parse().unwrap()),
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
            peer = %ClientAddr(peer),
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
    fn milliseconds_are_written_as_serde_json_and_debug_write_them() {
        let written = |value: f64| {
            let mut line = String::new();
            push_f64(&mut line, value).expect("a finite number");
            line
        };
        let check = |value: f64| {
            let json = serde_json::to_string(&value).expect("a finite number");
            assert_eq!(written(value), json, "{value:?}");
            if debug_digits_agree(value) {
                assert_eq!(written(value), format!("{value:?}"));
            }
        };
        // Whole microseconds as `server::observe` makes them, up to ~1e9 ms.
        for micros in (0..2_000_000u64).chain((0..1_000_000).map(|i| i * 999_983)) {
            check((micros as f64).round() / 1000.0);
        }
        let mut bits: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1_000_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            check((bits % 1_000_000_000_000) as f64 / 1000.0);
            let any = f64::from_bits(bits);
            if any.is_finite() {
                check(any);
            }
        }
        for other in [
            0.1234,
            1e-5,
            1e300,
            -1.5,
            -0.0,
            0.0,
            1e9,
            999_999_999.999,
            5e-324,
        ] {
            check(other);
        }
    }

    #[test]
    fn timestamps_are_the_ones_humantime_writes() {
        let at = |secs: u64, micros: u32| {
            UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000 + 999)
        };
        let times = [
            at(0, 0),
            at(0, 1),
            at(1_764_990_000, 999_999),
            at(1_764_990_001, 0),
            at(1_764_990_001, 120),
            at(1_764_990_000, 5),
            at(951_782_400, 250_000),
            at(LAST_FORMATTED_SECOND, 999_999),
            SystemTime::now(),
        ];
        for time in times {
            let mut line = String::new();
            push_timestamp(&mut line, time).expect("formattable");
            assert_eq!(line, humantime::format_rfc3339_micros(time).to_string());
        }
    }

    #[test]
    fn client_addresses_are_written_as_socket_addr_writes_them() {
        let mut addresses: Vec<SocketAddr> = [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:80",
            "203.0.113.7:51234",
            "[::1]:443",
            "[2001:db8::1]:8080",
            "[fe80::1%2]:1",
            "[::ffff:192.0.2.1]:9",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let mut bits: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..100_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let ip = std::net::Ipv4Addr::from((bits >> 16) as u32);
            addresses.push(SocketAddr::from((ip, bits as u16)));
        }
        for address in addresses {
            assert_eq!(ClientAddr(address).to_string(), address.to_string());
        }
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
