//! The OpenAI-compatible dialect (vLLM, llama.cpp's server): chat →
//! `POST /v1/chat/completions`, prompt → `POST /v1/completions`, both with
//! `stream: true` and `stream_options.include_usage` (usage comes in a last
//! frame with no choices); Server-Sent Events whose `data:` is a JSON chunk,
//! ending with `data: [DONE]`.

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::{ByteFault, Frame, GenerationRequest, Input, Usage, clip, count, fault_error};

/// The path and JSON body for `request`.
pub(super) fn request(request: &GenerationRequest) -> (&'static str, Value) {
    let (path, mut body) = match &request.input {
        Input::Messages(messages) => ("/v1/chat/completions", json!({ "messages": messages })),
        Input::Prompt(prompt) => ("/v1/completions", json!({ "prompt": prompt })),
    };
    body["model"] = json!(request.model);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(top_p) = request.top_p {
        body["top_p"] = json!(top_p);
    }
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    (path, body)
}

/// The frames of an SSE response body.
pub(super) fn frames<S>(bytes: S) -> impl Stream<Item = Result<Vec<Frame>, String>> + Send
where
    S: Stream<Item = Result<Bytes, ByteFault>> + Send + 'static,
{
    bytes.eventsource().map(|event| match event {
        Ok(event) => parse(&event.data),
        Err(EventStreamError::Transport(fault)) => Err(fault_error(fault)),
        Err(err) => Err(format!("not Server-Sent Events: {err}")),
    })
}

/// One `data:` payload.
fn parse(data: &str) -> Result<Vec<Frame>, String> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(vec![Frame::Done]);
    }
    let chunk: Value = serde_json::from_str(data).map_err(|err| format!("not JSON ({err}): {}", clip(data, 120)))?;
    if !chunk.is_object() {
        return Err(format!("not a JSON object: {}", clip(data, 120)));
    }
    if let Some(error) = chunk.get("error") {
        let message = error["message"]
            .as_str()
            .or_else(|| error.as_str())
            .map_or_else(|| error.to_string(), str::to_string);
        return Ok(vec![Frame::Error(message)]);
    }
    let mut frames = Vec::new();
    if let Some(choice) = chunk["choices"].as_array().and_then(|choices| choices.first()) {
        // Chat chunks carry `delta.content` (the first one often only a
        // role, its content null); completion chunks carry `text`.
        let text = choice["delta"]["content"].as_str().or_else(|| choice["text"].as_str());
        if let Some(text) = text.filter(|text| !text.is_empty()) {
            frames.push(Frame::Token(text.to_string()));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            frames.push(Frame::FinishReason(reason.to_string()));
        }
    } else if chunk.get("choices").is_none() && chunk.get("usage").is_none() {
        return Err(format!("a chunk with neither choices nor usage: {}", clip(data, 120)));
    }
    if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
        frames.push(Frame::Usage(Usage {
            prompt_tokens: count(&usage["prompt_tokens"]),
            completion_tokens: count(&usage["completion_tokens"]),
        }));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_from_llama_cpp_and_vllm() {
        // llama.cpp: a role-only first chunk, content null.
        assert_eq!(
            parse(r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}]}"#),
            Ok(vec![])
        );
        assert_eq!(
            parse(r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"I"}}]}"#),
            Ok(vec![Frame::Token("I".into())])
        );
        // vLLM: the role chunk has content "".
        assert_eq!(
            parse(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#),
            Ok(vec![])
        );
        assert_eq!(
            parse(r#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}]}"#),
            Ok(vec![Frame::FinishReason("length".into())])
        );
        assert_eq!(
            parse(r#"{"choices":[],"usage":{"completion_tokens":8,"prompt_tokens":32,"total_tokens":40}}"#),
            Ok(vec![Frame::Usage(Usage {
                prompt_tokens: 32,
                completion_tokens: 8
            })])
        );
        assert_eq!(parse("[DONE]"), Ok(vec![Frame::Done]));
    }

    #[test]
    fn completion_chunks_and_errors() {
        assert_eq!(
            parse(r#"{"choices":[{"text":" Paris","index":0,"logprobs":null,"finish_reason":null}]}"#),
            Ok(vec![Frame::Token(" Paris".into())])
        );
        assert_eq!(
            parse(r#"{"error":{"message":"context overflow","type":"server_error"}}"#),
            Ok(vec![Frame::Error("context overflow".into())])
        );
        assert!(parse("{\"choices\":[{\"delta\":").unwrap_err().starts_with("not JSON"));
        assert!(parse("hello").unwrap_err().starts_with("not JSON"));
        assert!(parse("42").unwrap_err().starts_with("not a JSON object"));
        assert!(parse(r#"{"id":"x"}"#).unwrap_err().starts_with("a chunk with neither"));
    }

    #[test]
    fn requests_carry_every_option() {
        let (path, body) = request(&GenerationRequest {
            model: "m".into(),
            input: Input::Prompt("p".into()),
            max_tokens: Some(5),
            temperature: Some(0.0),
            top_p: Some(0.9),
            stop: vec!["\n".into()],
        });
        assert_eq!(path, "/v1/completions");
        assert_eq!(body["prompt"], "p");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["stop"], json!(["\n"]));
        assert!((body["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    }
}

#[cfg(test)]
mod properties {
    //! Whatever an engine sends: any `data:` payload parses to frames or a
    //! named error, never a panic; and where the body is cut into network
    //! reads never changes the frames.

    use proptest::prelude::*;

    use super::*;
    use crate::engines::frames_of_pieces;

    fn chunk(token: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": null}]})
        )
    }

    proptest! {
        #[test]
        fn any_data_payload_is_frames_or_an_error(data in ".{0,200}") {
            match parse(&data) {
                Ok(_) => {}
                Err(err) => prop_assert!(!err.is_empty()),
            }
        }

        #[test]
        fn any_json_value_is_frames_or_an_error(keys in proptest::collection::vec(".{0,6}", 0..5), depth in 0usize..200) {
            let mut value = json!({});
            for key in &keys {
                value = json!({ key.clone(): value, "choices": [{"delta": {"content": key}}] });
            }
            let nested = format!("{}{}{}", "[".repeat(depth), value, "]".repeat(depth));
            let _ = parse(&nested);
        }

        #[test]
        fn where_the_body_is_cut_never_changes_the_frames(
            tokens in proptest::collection::vec("[a-zA-Z é漢🙂\\\"]{0,8}", 1..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let mut body: String = tokens.iter().map(|token| chunk(token)).collect();
            body.push_str("data: [DONE]\n\n");
            let whole = frames_of_pieces(frames, body.as_bytes(), &[]);
            let cut = frames_of_pieces(frames, body.as_bytes(), &cuts);
            prop_assert_eq!(&whole, &cut);
            prop_assert_eq!(whole.last(), Some(&Ok(vec![Frame::Done])));
        }
    }
}
