//! Plain text: the title is the first non-empty line, links are the
//! `http://` / `https://` URLs found in the text.

use crate::{Document, Link};

/// Longest title taken from the first line of a plain-text document.
const MAX_TITLE_CHARS: usize = 200;

pub(crate) fn extract(content: &str) -> Document {
    let text = normalise(content);
    let title = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| line.chars().take(MAX_TITLE_CHARS).collect());
    let links = text
        .split_whitespace()
        .filter(|word| word.starts_with("http://") || word.starts_with("https://"))
        .map(|word| {
            let href = word.trim_end_matches(['.', ',', ';', ':', ')', ']', '>', '"', '\'']);
            Link {
                href: href.to_string(),
                text: href.to_string(),
            }
        })
        .collect();
    Document { title, text, links }
}

/// One line of text per non-blank source line, with runs of white space
/// collapsed to one space; blank lines are dropped, so every format yields
/// the same shape of text.
pub(crate) fn normalise(raw: &str) -> String {
    let lines: Vec<String> = raw
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect();
    lines.join("\n")
}
