//! The progress bar shared by sync, backup and restore: bytes, rate and ETA, with the file
//! count as its message. Hidden when stdout is not a terminal (logs and CI get the summary
//! only).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str = "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} \
                        {binary_bytes_per_sec} ETA {eta} {msg}";

/// A bar of length 0 (callers grow it as they discover work), drawn on stdout only when
/// `show` and stdout is a terminal.
pub(crate) fn bar(show: bool) -> ProgressBar {
    if !show || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
    if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Prints a line above the bar (or plainly when the bar is hidden).
pub(crate) fn say(bar: &ProgressBar, line: &str) {
    bar.suspend(|| println!("{line}"));
}

/// The bar's message: files done of files found so far.
pub(crate) fn files_message(done: u64, found: u64, walking: bool) -> String {
    let more = if walking { "+" } else { "" };
    format!("{done}/{found}{more} files")
}
