//! How errors are printed: the library's errors are `thiserror` types (or, where a
//! figure is reported as unavailable, the reason as text); a chain of causes is
//! printed one way, outermost first.

use std::error::Error;

/// "outer: cause: root cause", for errors that keep their causes as sources (aya's).
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
