//! HTML via html5ever (`scraper`): the `<title>` (else the first `<h1>`),
//! the visible text with block elements on their own lines, and every
//! `<a href>`. The tree is walked iteratively, so deeply nested markup cannot
//! exhaust the guest's stack.

use ego_tree::iter::Edge;
use scraper::{Html, Node};

use crate::{Document, Link, text::normalise};

/// Elements whose content is never visible text.
const HIDDEN: &[&str] = &["head", "script", "style", "noscript", "template", "svg", "math"];
/// Elements that start and end a line of text.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
];

pub(crate) fn extract(content: &str) -> Document {
    let html = Html::parse_document(content);
    let mut raw = String::new();
    let mut hidden_depth = 0usize;
    let mut links = Vec::new();
    // Open <a> elements: (href, text collected so far).
    let mut open_links: Vec<(String, String)> = Vec::new();
    let mut title: Option<String> = None;
    let mut in_title = false;
    let mut first_h1: Option<String> = None;
    let mut h1_depth = 0usize;

    for edge in html.tree.root().traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(element) => {
                    let name = element.name();
                    if name == "title" && title.is_none() {
                        in_title = true;
                        title = Some(String::new());
                    }
                    if HIDDEN.contains(&name) {
                        hidden_depth += 1;
                    }
                    if name == "h1" && first_h1.is_none() {
                        h1_depth += 1;
                    }
                    if name == "a" && hidden_depth == 0 {
                        open_links.push((element.attr("href").unwrap_or_default().to_string(), String::new()));
                    }
                    if BLOCKS.contains(&name) {
                        raw.push('\n');
                    }
                }
                Node::Text(text) => {
                    if in_title && let Some(title) = title.as_mut() {
                        title.push_str(text);
                    }
                    if hidden_depth == 0 {
                        raw.push_str(text);
                        for (_, link_text) in &mut open_links {
                            link_text.push_str(text);
                        }
                        if h1_depth > 0 {
                            first_h1.get_or_insert_with(String::new).push_str(text);
                        }
                    }
                }
                _ => {}
            },
            Edge::Close(node) => {
                if let Node::Element(element) = node.value() {
                    let name = element.name();
                    if name == "title" {
                        in_title = false;
                    }
                    if HIDDEN.contains(&name) {
                        hidden_depth = hidden_depth.saturating_sub(1);
                    }
                    if name == "h1" && h1_depth > 0 {
                        h1_depth -= 1;
                        if h1_depth == 0 {
                            first_h1.get_or_insert_with(String::new);
                        }
                    }
                    if name == "a"
                        && hidden_depth == 0
                        && let Some((href, text)) = open_links.pop()
                        && !href.is_empty()
                    {
                        links.push(Link {
                            href,
                            text: collapse(&text),
                        });
                    }
                    if BLOCKS.contains(&name) {
                        raw.push('\n');
                    }
                }
            }
        }
    }

    let title = title
        .map(|title| collapse(&title))
        .filter(|title| !title.is_empty())
        .or_else(|| first_h1.map(|h1| collapse(&h1)).filter(|h1| !h1.is_empty()));
    Document {
        title,
        text: normalise(&raw),
        links,
    }
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
