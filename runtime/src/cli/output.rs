//! Printing results to stdout without panicking when the reader goes away
//! (`citadel component inspect x.wasm | head`): a closed pipe ends the
//! printing, not the process.

use std::fmt::Display;
use std::io::Write;

/// Print one line to stdout; errors (a closed pipe) are ignored.
pub(crate) fn line(text: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}
