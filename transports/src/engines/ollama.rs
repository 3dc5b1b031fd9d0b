//! Ollama's native dialect: chat → `POST /api/chat`, prompt →
//! `POST /api/generate`, options in `options` (`num_predict`,
//! `temperature`, `top_p`, `stop`); the response is newline-delimited JSON,
//! one object per token (`message.content` or `response`), the last with
//! `done: true`, `done_reason` and the counts (`prompt_eval_count`,
//! `eval_count`); errors as `{"error": "…"}`.

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use super::{ByteFault, Frame, GenerationRequest, Input, Usage, clip, count, fault_error};

/// Longest NDJSON line accepted.
const MAX_LINE: usize = 1 << 20;

/// The path and JSON body for `request`.
pub(super) fn request(request: &GenerationRequest) -> (&'static str, Value) {
    let (path, mut body) = match &request.input {
        Input::Messages(messages) => ("/api/chat", json!({ "messages": messages })),
        Input::Prompt(prompt) => ("/api/generate", json!({ "prompt": prompt })),
    };
    body["model"] = json!(request.model);
    body["stream"] = json!(true);
    let mut options = serde_json::Map::new();
    if let Some(max_tokens) = request.max_tokens {
        options.insert("num_predict".into(), json!(max_tokens));
    }
    if let Some(temperature) = request.temperature {
        options.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        options.insert("top_p".into(), json!(top_p));
    }
    if !request.stop.is_empty() {
        options.insert("stop".into(), json!(request.stop));
    }
    body["options"] = Value::Object(options);
    (path, body)
}

/// The frames of an NDJSON response body.
pub(super) fn frames<S>(bytes: S) -> impl Stream<Item = Result<Vec<Frame>, String>> + Send
where
    S: Stream<Item = Result<Bytes, ByteFault>> + Send + Unpin + 'static,
{
    let reader = StreamReader::new(bytes.map_err(std::io::Error::other));
    FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE)).map(|line| match line {
        Ok(line) if line.trim().is_empty() => Ok(Vec::new()),
        Ok(line) => parse(&line),
        Err(LinesCodecError::MaxLineLengthExceeded) => Err(format!("a line over {MAX_LINE} bytes")),
        Err(LinesCodecError::Io(err)) if err.kind() == std::io::ErrorKind::InvalidData => {
            Err("not UTF-8 text".to_string())
        }
        Err(LinesCodecError::Io(err)) => match err.downcast::<ByteFault>() {
            Ok(fault) => Err(fault_error(fault)),
            Err(err) => Err(fault_error(ByteFault::Transport(err.to_string()))),
        },
    })
}

/// One NDJSON line.
fn parse(line: &str) -> Result<Vec<Frame>, String> {
    let object: Value = serde_json::from_str(line).map_err(|err| format!("not JSON ({err}): {}", clip(line, 120)))?;
    if !object.is_object() {
        return Err(format!("not a JSON object: {}", clip(line, 120)));
    }
    if let Some(error) = object["error"].as_str() {
        return Ok(vec![Frame::Error(error.to_string())]);
    }
    let mut frames = Vec::new();
    let text = object["message"]["content"]
        .as_str()
        .or_else(|| object["response"].as_str());
    if let Some(text) = text.filter(|text| !text.is_empty()) {
        frames.push(Frame::Token(text.to_string()));
    }
    match object["done"].as_bool() {
        Some(true) => {
            frames.push(Frame::FinishReason(
                object["done_reason"].as_str().unwrap_or("stop").to_string(),
            ));
            if object.get("eval_count").is_some() || object.get("prompt_eval_count").is_some() {
                frames.push(Frame::Usage(Usage {
                    prompt_tokens: count(&object["prompt_eval_count"]),
                    completion_tokens: count(&object["eval_count"]),
                }));
            }
            frames.push(Frame::Done);
        }
        Some(false) => {}
        None => return Err(format!("a frame without `done`: {}", clip(line, 120))),
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_generate_frames() {
        assert_eq!(
            parse(
                r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The"},"done":false}"#
            ),
            Ok(vec![Frame::Token("The".into())])
        );
        assert_eq!(
            parse(r#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":" sky","done":false}"#),
            Ok(vec![Frame::Token(" sky".into())])
        );
        assert_eq!(
            parse(
                r#"{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"length","total_duration":4883583458,"prompt_eval_count":26,"eval_count":8}"#
            ),
            Ok(vec![
                Frame::FinishReason("length".into()),
                Frame::Usage(Usage {
                    prompt_tokens: 26,
                    completion_tokens: 8
                }),
                Frame::Done
            ])
        );
        assert_eq!(
            parse(r#"{"error":"model \"nope\" not found, try pulling it first"}"#),
            Ok(vec![Frame::Error(
                "model \"nope\" not found, try pulling it first".into()
            )])
        );
        assert!(parse(r#"{"response":"x"}"#).unwrap_err().starts_with("a frame without"));
        assert!(parse("{\"response\":").unwrap_err().starts_with("not JSON"));
    }

    #[test]
    fn options_go_in_options() {
        let (path, body) = request(&GenerationRequest {
            model: "llama3.2".into(),
            input: Input::Messages(vec![super::super::Message {
                role: "user".into(),
                content: "hi".into(),
            }]),
            max_tokens: Some(8),
            temperature: Some(0.0),
            top_p: None,
            stop: Vec::new(),
        });
        assert_eq!(path, "/api/chat");
        assert_eq!(body["messages"][0]["content"], "hi");
        assert_eq!(body["options"], json!({"num_predict": 8, "temperature": 0.0}));
        assert_eq!(body["stream"], true);
    }
}

#[cfg(test)]
mod properties {
    //! Whatever an Ollama sends: any line parses to frames or a named error,
    //! never a panic; where the body is cut never changes the frames, even
    //! inside a multi-byte character.

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::engines::frames_of_pieces;

    proptest! {
        #[test]
        fn any_line_is_frames_or_an_error(line in ".{0,200}") {
            match parse(&line) {
                Ok(_) => {}
                Err(err) => prop_assert!(!err.is_empty()),
            }
        }

        #[test]
        fn where_the_body_is_cut_never_changes_the_frames(
            tokens in proptest::collection::vec("[a-zA-Z é漢🙂\\\"]{0,8}", 1..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let mut body = String::new();
            for token in &tokens {
                body.push_str(&json!({"message": {"role": "assistant", "content": token}, "done": false}).to_string());
                body.push('\n');
            }
            body.push_str(&json!({"done": true, "done_reason": "stop"}).to_string());
            body.push('\n');
            let whole = frames_of_pieces(frames, body.as_bytes(), &[]);
            let cut = frames_of_pieces(frames, body.as_bytes(), &cuts);
            prop_assert_eq!(&whole, &cut);
            prop_assert!(whole.iter().all(Result::is_ok), "{:?}", whole);
        }
    }
}
