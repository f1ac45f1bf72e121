//! JSONL prompt files: one JSON object a line (blank lines skipped), with
//! exactly one of
//!
//! - `"prompt": "text"` (completions),
//! - `"prompt_ids": [1, 2, 3]` (completions over token ids),
//! - `"messages": [{"role": "user", "content": "..."}]` (chat),
//!
//! and optionally `"max_tokens"` (else the run's `--max-tokens`),
//! `"expected_ids"` and `"expected_text"`: the greedy output the correctness
//! mode (`--check`) compares with. `--record-expected` writes this format.

use serde::{Deserialize, Serialize};

use super::{Expected, Item, WorkloadError};
use crate::target::{Message, Prompt, Timeline};

/// One line, as written and read.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_text: Option<String>,
}

/// Parses a JSONL file's text; `path` names it in errors.
pub fn parse(path: &str, text: &str) -> Result<Vec<Item>, WorkloadError> {
    let mut items = Vec::new();
    super::for_each_line(path, text, |line: Line| {
        items.push(item(line)?);
        Ok(())
    })?;
    if items.is_empty() {
        return Err(WorkloadError::File {
            path: path.to_string(),
            message: "no prompt in the file".into(),
        });
    }
    Ok(items)
}

/// Reads and parses a JSONL file.
pub fn load(path: &std::path::Path) -> Result<Vec<Item>, WorkloadError> {
    let (name, text) = super::read_dataset(path)?;
    parse(&name, &text)
}

fn item(line: Line) -> Result<Item, String> {
    let prompt = match (line.prompt, line.prompt_ids, line.messages) {
        (Some(t), None, None) => Prompt::Text(t),
        (None, Some(ids), None) if !ids.is_empty() => Prompt::Ids(ids),
        (None, None, Some(m)) if !m.is_empty() => Prompt::Chat(m),
        (None, Some(_), None) => return Err("prompt_ids is empty".into()),
        (None, None, Some(_)) => return Err("messages is empty".into()),
        _ => return Err("give exactly one of prompt, prompt_ids, messages".into()),
    };
    if line.max_tokens == Some(0) {
        return Err("max_tokens must be at least 1".into());
    }
    Ok(Item {
        prompt,
        max_tokens: line.max_tokens,
        expected: Expected {
            ids: line.expected_ids,
            text: line.expected_text,
        },
    })
}

/// One JSONL line: `item` with `max_tokens` and the output of `timeline`
/// as its expectation.
pub fn record_line(item: &Item, max_tokens: u32, timeline: &Timeline) -> String {
    let mut line = Line {
        max_tokens: Some(max_tokens),
        expected_ids: timeline.token_ids.clone(),
        expected_text: Some(timeline.text.clone()),
        ..Line::default()
    };
    match &item.prompt {
        Prompt::Text(t) => line.prompt = Some(t.clone()),
        Prompt::Ids(ids) => line.prompt_ids = Some(ids.clone()),
        Prompt::Chat(m) => line.messages = Some(m.clone()),
    }
    // A struct of strings, numbers and lists always serializes.
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Role;

    #[test]
    fn parses_the_three_prompt_kinds() {
        let text = r#"{"prompt": "Hello", "max_tokens": 4, "expected_text": " world"}

{"prompt_ids": [1, 2, 3], "expected_ids": [7, 8]}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
"#;
        let items = parse("p.jsonl", text).expect("parse");
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].prompt, Prompt::Text("Hello".into()));
        assert_eq!(items[0].max_tokens, Some(4));
        assert_eq!(items[0].expected.text.as_deref(), Some(" world"));
        assert_eq!(items[1].prompt, Prompt::Ids(vec![1, 2, 3]));
        assert_eq!(items[1].expected.ids, Some(vec![7, 8]));
        match &items[2].prompt {
            Prompt::Chat(m) => assert_eq!((m.len(), m[0].role), (2, Role::System)),
            other => panic!("{other:?}"),
        }
        assert!(items[2].expected.is_empty());
    }

    #[test]
    fn bad_lines_name_the_line() {
        for (bad, want) in [
            (
                r#"{"prompt": "a", "messages": [{"role":"user","content":"b"}]}"#,
                "exactly one",
            ),
            (r#"{}"#, "exactly one"),
            (r#"{"prompt_ids": []}"#, "empty"),
            (
                r#"{"messages": [{"role": "robot", "content": "x"}]}"#,
                "unknown variant",
            ),
            (r#"{"prompt": "a", "max_tokens": 0}"#, "at least 1"),
            (r#"{"prompt": "a", "temperature": 1}"#, "unknown field"),
            ("not json", "expected"),
        ] {
            let text = format!("{{\"prompt\": \"ok\"}}\n{bad}\n");
            let err = parse("f.jsonl", &text).expect_err(bad).to_string();
            assert!(err.starts_with("f.jsonl, line 2: "), "{err}");
            assert!(err.contains(want), "{err}");
        }
        assert!(parse("e.jsonl", "\n\n").is_err());
    }

    #[test]
    fn recorded_lines_read_back_as_expectations() {
        let item = Item::new(Prompt::Ids(vec![4, 5]));
        let t = Timeline {
            text: "ab".into(),
            token_ids: Some(vec![9, 10]),
            ..Timeline::default()
        };
        let line = record_line(&item, 2, &t);
        let back = parse("r.jsonl", &line).expect("parse");
        assert_eq!(back[0].prompt, item.prompt);
        assert_eq!(back[0].max_tokens, Some(2));
        assert_eq!(
            back[0].expected,
            Expected {
                ids: Some(vec![9, 10]),
                text: Some("ab".into())
            }
        );
    }
}
