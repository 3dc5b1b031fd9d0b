//! `extract`: a real document-extraction handler.
//!
//! Payload `{"content": "...", "format": "html" | "markdown" | "text",
//! "chunk_chars": N}` → result `{title, text, word_count, links, chunk_count}`;
//! the plain text is also streamed as chunks of at most `chunk_chars`
//! characters, cut on word boundaries (a single word longer than that is cut
//! inside the word), and a summary record goes to the job's log. Anything
//! malformed is an `invalid-input` error.

mod chunks;
mod html;
mod markdown;
mod text;

use citadel_guest::log::{self, Level};
use citadel_guest::{Guest, HandlerError, Job, stream};
use serde::{Deserialize, Serialize};

/// Chunk size when the payload names none.
const DEFAULT_CHUNK_CHARS: usize = 1000;
/// Largest chunk size a payload may ask for.
const MAX_CHUNK_CHARS: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    content: String,
    format: Format,
    #[serde(default = "default_chunk_chars")]
    chunk_chars: usize,
}

fn default_chunk_chars() -> usize {
    DEFAULT_CHUNK_CHARS
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Format {
    Html,
    Markdown,
    Text,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Markdown => "markdown",
            Format::Text => "text",
        }
    }
}

/// What every format's parser produces.
#[derive(Default)]
pub(crate) struct Document {
    pub title: Option<String>,
    pub text: String,
    pub links: Vec<Link>,
}

#[derive(Serialize, Clone, PartialEq, Debug)]
pub(crate) struct Link {
    pub href: String,
    pub text: String,
}

#[derive(Serialize)]
struct Extraction<'a> {
    title: Option<&'a str>,
    text: &'a str,
    word_count: usize,
    links: &'a [Link],
    chunk_count: usize,
}

struct Extract;

impl Guest for Extract {
    fn handle(job: Job) -> Result<String, HandlerError> {
        let request: Request = serde_json::from_str(&job.payload).map_err(|err| {
            HandlerError::InvalidInput(format!(
                "payload must be {{\"content\": string, \"format\": \"html\"|\"markdown\"|\"text\", \"chunk_chars\"?: number}}: {err}"
            ))
        })?;
        if request.chunk_chars == 0 || request.chunk_chars > MAX_CHUNK_CHARS {
            return Err(HandlerError::InvalidInput(format!(
                "chunk_chars must be between 1 and {MAX_CHUNK_CHARS}, got {}",
                request.chunk_chars
            )));
        }
        let document = match request.format {
            Format::Html => html::extract(&request.content),
            Format::Markdown => markdown::extract(&request.content),
            Format::Text => text::extract(&request.content),
        };
        let mut chunk_count = 0;
        for chunk in chunks::word_bounded(&document.text, request.chunk_chars) {
            stream::emit(&chunk)
                .map_err(|err| HandlerError::Failed(format!("chunk {chunk_count} not accepted: {err:?}")))?;
            chunk_count += 1;
        }
        let word_count = document.text.split_whitespace().count();
        log::log(
            Level::Info,
            "document extracted",
            &[
                ("format".to_string(), request.format.name().to_string()),
                ("words".to_string(), word_count.to_string()),
                ("links".to_string(), document.links.len().to_string()),
                ("chunks".to_string(), chunk_count.to_string()),
            ],
        );
        let extraction = Extraction {
            title: document.title.as_deref(),
            text: &document.text,
            word_count,
            links: &document.links,
            chunk_count,
        };
        serde_json::to_string(&extraction).map_err(|err| HandlerError::Failed(err.to_string()))
    }
}

citadel_guest::export_handler!(Extract);
