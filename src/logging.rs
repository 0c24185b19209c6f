//! The process's log output: one `tracing` subscriber writing text or JSON lines to stdout,
//! through a line buffer per worker thread, filtered by `log.level` (reloadable, see
//! `filter`).
//!
//! A request's access line is small and a `write` to a file or a pipe costs more than
//! formatting it. So a worker thread (one that opted in with [`buffer_this_thread`]) appends
//! its lines to a buffer of its own and writes them out in one `write` when:
//! - the buffer reaches `log.buffer` bytes;
//! - the worker runs out of work and is about to wait for events (its runtime's park hook
//!   calls [`flush_this_thread`]): a quiet server writes each line as it comes, a busy one
//!   every few dozen requests;
//! - a line at WARN or ERROR comes: it is not held back, and what the thread logged before
//!   it goes out first, so that each thread's lines keep their order.
//!
//! As with nginx's `access_log … buffer=`, lines still buffered are lost if the process is
//! killed outright (SIGKILL, out of memory); a normal exit writes them ([`flush_all`]).
//! Other threads (and workers when `log.buffer = 0`) write each line straight to stdout.

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use anyhow::Context;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::{self, MakeWriter, format::JsonFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

mod filter;
mod format;
mod query;

use filter::LiveFilter;
use format::EventFormat;
pub(crate) use format::{ACCESS_TARGET, ClientAddr};
pub(crate) use query::{masked as masked_target, masked_path};

/// Installs the subscriber: `RUST_LOG` when set, `log.level` otherwise.
pub fn init(log: &LogConfig) -> anyhow::Result<()> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|env| !env.is_empty());
    let filter = match &from_env {
        Some(env) => EnvFilter::try_new(env).context("RUST_LOG")?,
        None => level_filter(&log.level)?,
    };
    let filter = LiveFilter::new(filter);
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(colours(io::stdout().is_terminal()))
        .with_writer(LogOutput);
    // The filter outermost, as `fmt().with_env_filter()` puts it: it decides for all.
    let registry = tracing_subscriber::registry();
    let installed = match log.format {
        LogFormat::Text => registry
            .with(lines.event_format(EventFormat::text(fmt::format())))
            .with(filter.clone())
            .try_init(),
        LogFormat::Json => registry
            .with(
                lines
                    .fmt_fields(JsonFields::new())
                    .event_format(EventFormat::json(fmt::format().json().flatten_event(true))),
            )
            .with(filter.clone())
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    // Under RUST_LOG the file's level never applies, at start or on reload.
    if from_env.is_none() {
        let _ = RELOADABLE.set(filter);
    }
    Ok(())
}

/// The filter `log.level` says, or why it says none (the error names the key).
pub fn level_filter(level: &str) -> anyhow::Result<EnvFilter> {
    for directive in level.split(',').map(str::trim) {
        // A word alone is a level, or a target to log at every level: a misspelt level
        // ("inof") would be taken for a target and silence the whole log, this line included.
        let bare_word = !directive.is_empty() && !directive.contains(['=', '[', ':']);
        if bare_word
            && directive
                .parse::<tracing::level_filters::LevelFilter>()
                .is_err()
        {
            anyhow::bail!(
                "log.level: {directive:?} is no level (trace, debug, info, warn, error, off); \
                 a target is given one as target=level"
            );
        }
    }
    // Not `.context()`: the parse error's source repeats its message.
    let filter = EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("log.level: {e}"))?;
    // rustls warns of what a TLS peer sent (an IP address or an odd name as SNI, an alert),
    // which any client chooses: a line per handshake, and one client could fill the log.
    // Only its errors are logged unless `log.level` names rustls.
    let names_rustls = level.contains("rustls");
    match QUIET_TLS.parse() {
        Ok(quiet) if !names_rustls && !level.trim().eq_ignore_ascii_case("off") => {
            Ok(filter.add_directive(quiet))
        }
        _ => Ok(filter),
    }
}

/// The directive that keeps rustls to its errors.
const QUIET_TLS: &str = "rustls=error";

/// The installed filter, when `log.level` chose it (not `RUST_LOG`).
static RELOADABLE: OnceLock<LiveFilter> = OnceLock::new();

/// Filters the log with a reloaded `log.level` from now on. False when `RUST_LOG` chose the
/// filter (it overrides the file) or [`init`] installed none.
pub fn reload_level(level: &str) -> anyhow::Result<bool> {
    let Some(live) = RELOADABLE.get() else {
        return Ok(false);
    };
    live.replace(level_filter(level)?);
    Ok(true)
}

/// Whether text lines get ANSI colours: only on a terminal, where a person reads them, and
/// not when `NO_COLOR` is set (no-color.org). In a file, a pipe or a log collector
/// (journald, `docker logs`) the escape codes would be noise in every line.
fn colours(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

thread_local! {
    /// This thread's line buffer, while it has one.
    static LINES: RefCell<Option<Arc<Lines>>> = const { RefCell::new(None) };
}

/// Every thread's line buffer, for [`flush_all`].
static ALL_LINES: Mutex<Vec<Arc<Lines>>> = Mutex::new(Vec::new());

/// Makes this thread buffer its log lines, up to `capacity` bytes (none when 0), until the
/// returned guard drops (which writes out what is left). For threads whose runtime calls
/// [`flush_this_thread`] when it parks.
pub fn buffer_this_thread(capacity: usize) -> Option<BufferedLines> {
    if capacity == 0 {
        return None;
    }
    let lines = Arc::new(Lines(Mutex::new(LineBuffer::new(capacity))));
    lock(&ALL_LINES).push(Arc::clone(&lines));
    LINES.set(Some(lines));
    Some(BufferedLines(()))
}

/// Writes out this thread's buffered lines, if it has any: the park hook of a worker's
/// runtime.
pub fn flush_this_thread() {
    with_this_threads(Lines::flush);
}

/// `f` on this thread's line buffer, if it has one; `None` otherwise, and while the thread
/// exits (its thread-locals may be gone by then: a line logged that late goes to stdout).
fn with_this_threads<R>(f: impl FnOnce(&Lines) -> R) -> Option<R> {
    LINES
        .try_with(|lines| lines.borrow().as_deref().map(f))
        .ok()
        .flatten()
}

/// Writes out every thread's buffered lines: at exit, after the server stopped.
pub fn flush_all() {
    for lines in lock(&ALL_LINES).iter() {
        lines.flush();
    }
}

/// This thread's line buffering; dropping it writes out what is left and stops buffering.
pub struct BufferedLines(());

impl Drop for BufferedLines {
    fn drop(&mut self) {
        if let Some(lines) = LINES.take() {
            lines.flush();
            lock(&ALL_LINES).retain(|other| !Arc::ptr_eq(other, &lines));
        }
    }
}

/// The subscriber's writer: into this thread's buffer if it has one, to stdout otherwise.
struct LogOutput;

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = EventLine;

    fn make_writer(&'a self) -> EventLine {
        EventLine { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventLine {
        EventLine {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// One event's line (the subscriber writes each in one `write_all`).
struct EventLine {
    /// WARN or ERROR: written out at once.
    urgent: bool,
}

impl Write for EventLine {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let buffered =
            with_this_threads(|lines| lock(&lines.0).push(line, self.urgent, &mut io::stdout()));
        if buffered.is_none() {
            io::stdout().write_all(line)?;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A thread's buffer; locked by its own thread on every line, and by [`flush_all`] once.
struct Lines(Mutex<LineBuffer>);

impl Lines {
    fn flush(&self) {
        lock(&self.0).write_out(&mut io::stdout());
    }
}

/// Whole lines waiting to be written, at most `capacity` bytes but for the last one.
struct LineBuffer {
    bytes: Vec<u8>,
    capacity: usize,
}

impl LineBuffer {
    fn new(capacity: usize) -> LineBuffer {
        LineBuffer {
            bytes: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends `line`; writes the buffer to `out` once it is full or the line is urgent.
    fn push(&mut self, line: &[u8], urgent: bool, out: &mut impl Write) {
        if self.bytes.len() + line.len() > self.capacity {
            self.write_out(out);
        }
        self.bytes.extend_from_slice(line);
        if urgent || self.bytes.len() >= self.capacity {
            self.write_out(out);
        }
    }

    fn write_out(&mut self, out: &mut impl Write) {
        if self.bytes.is_empty() {
            return;
        }
        // Nowhere to report a failed write to stdout (a closed pipe): the lines are dropped,
        // as the subscriber drops a line it cannot write.
        let _ = out.write_all(&self.bytes);
        self.bytes.clear();
    }
}

/// A lock that a panic elsewhere does not poison: the buffer holds whole lines at every
/// point where a panic could unwind.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_warnings_about_peers_are_not_logged_unless_asked_for() {
        let enabled = |level: &str| {
            let filter = level_filter(level).unwrap();
            let subscriber = tracing_subscriber::registry().with(filter);
            tracing::subscriber::with_default(subscriber, || {
                (
                    tracing::enabled!(target: "rustls::msgs::handshake", Level::WARN),
                    tracing::enabled!(target: "rustls::msgs::handshake", Level::ERROR),
                    tracing::enabled!(target: "offload::server", Level::WARN),
                )
            })
        };
        assert_eq!(enabled("info"), (false, true, true));
        assert_eq!(enabled("debug"), (false, true, true));
        assert_eq!(enabled("info,rustls=warn"), (true, true, true));
        assert_eq!(enabled("off"), (false, false, false));
    }

    #[test]
    fn lines_wait_until_the_buffer_is_full() {
        let mut buffer = LineBuffer::new(32);
        let mut out = Vec::new();
        buffer.push(b"first line\n", false, &mut out);
        buffer.push(b"second line\n", false, &mut out);
        assert!(out.is_empty(), "23 of 32 bytes: still buffered");
        buffer.push(b"third line\n", false, &mut out);
        assert_eq!(
            out, b"first line\nsecond line\n",
            "written before passing 32"
        );
        buffer.push(b"fourth line, longer.\n", false, &mut out);
        assert_eq!(
            out,
            b"first line\nsecond line\nthird line\nfourth line, longer.\n"
        );
        assert!(buffer.bytes.is_empty(), "11 bytes and 21 reach 32: written");
    }

    #[test]
    fn an_urgent_line_goes_out_at_once_after_what_came_before() {
        let mut buffer = LineBuffer::new(1024);
        let mut out = Vec::new();
        buffer.push(b"INFO a\n", false, &mut out);
        buffer.push(b"WARN b\n", true, &mut out);
        assert_eq!(out, b"INFO a\nWARN b\n");
        assert!(buffer.bytes.is_empty());
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_written_whole() {
        let mut buffer = LineBuffer::new(8);
        let mut out = Vec::new();
        buffer.push(b"abc\n", false, &mut out);
        buffer.push(b"a line of twenty b\n", false, &mut out);
        assert_eq!(out, b"abc\na line of twenty b\n");
        buffer.write_out(&mut out);
        assert_eq!(out, b"abc\na line of twenty b\n", "nothing left to write");
    }

    #[test]
    fn a_threads_lines_are_buffered_until_flushed_and_then_straight_again() {
        std::thread::spawn(|| {
            let held = || with_this_threads(|lines| lock(&lines.0).bytes.clone());
            assert_eq!(held(), None, "a thread buffers only once it opts in");
            let guard = buffer_this_thread(4096).expect("buffering");
            LogOutput
                .make_writer()
                .write_all(b"buffered line\n")
                .expect("write");
            assert_eq!(held().as_deref(), Some(&b"buffered line\n"[..]));
            flush_this_thread();
            assert_eq!(held().as_deref(), Some(&b""[..]), "written out");
            drop(guard);
            assert_eq!(held(), None, "the guard ends buffering");
        })
        .join()
        .expect("assertions on the thread");
        assert!(buffer_this_thread(0).is_none(), "0: no buffer");
    }
}
