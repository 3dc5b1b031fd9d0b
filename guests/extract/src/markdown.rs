//! Markdown via pulldown-cmark: the first level-1 heading is the title,
//! paragraphs, headings, list items and code blocks become lines of text,
//! inline links and autolinks become links; raw HTML is dropped.

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use crate::{Document, Link, text::normalise};

pub(crate) fn extract(content: &str) -> Document {
    let mut raw = String::new();
    let mut title: Option<String> = None;
    let mut in_h1 = false;
    let mut open_links: Vec<(String, String)> = Vec::new();
    let mut links = Vec::new();

    for event in Parser::new(content) {
        match event {
            Event::Start(Tag::Heading {
                level: HeadingLevel::H1,
                ..
            }) if title.is_none() => {
                in_h1 = true;
                title = Some(String::new());
            }
            Event::Start(Tag::Link { dest_url, .. }) => open_links.push((dest_url.to_string(), String::new())),
            Event::End(TagEnd::Link) => {
                if let Some((href, text)) = open_links.pop() {
                    links.push(Link {
                        href,
                        text: text.split_whitespace().collect::<Vec<_>>().join(" "),
                    });
                }
            }
            Event::End(TagEnd::Heading(level)) => {
                if level == HeadingLevel::H1 {
                    in_h1 = false;
                }
                raw.push('\n');
            }
            Event::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::CodeBlock | TagEnd::BlockQuote(_)) => raw.push('\n'),
            Event::Text(text) | Event::Code(text) => {
                raw.push_str(&text);
                if in_h1 && let Some(title) = title.as_mut() {
                    title.push_str(&text);
                }
                for (_, link_text) in &mut open_links {
                    link_text.push_str(&text);
                }
            }
            Event::SoftBreak => raw.push(' '),
            Event::HardBreak | Event::Rule => raw.push('\n'),
            _ => {}
        }
    }
    let title = title
        .map(|title| title.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|title| !title.is_empty());
    Document {
        title,
        text: normalise(&raw),
        links,
    }
}
