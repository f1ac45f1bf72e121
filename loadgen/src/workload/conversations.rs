//! The multi-turn chat set shipped with weft-load
//! (`loadgen/data/conversations.jsonl`, made by `make_conversations.py`
//! next to it), or any file in its format: one conversation a line,
//! `{"id": "...", "messages": [...]}`, user and assistant turns alternating
//! after an optional system message.
//!
//! Each assistant turn becomes one chat request whose messages are all those
//! before it, so the requests of a conversation extend each other's prompt
//! as a chat client's do (and reward a prefix cache). The assistant turns
//! are fixed history rather than the server's answers, which keeps every
//! request identical from run to run and server to server. Requests go
//! conversation by conversation, turn by turn.

use serde::Deserialize;

use super::{Item, WorkloadError};
use crate::target::{Message, Prompt, Role};

/// The shipped set.
pub const SHIPPED: &str = include_str!("../../data/conversations.jsonl");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conversation {
    #[allow(dead_code)]
    id: String,
    messages: Vec<Message>,
}

/// The shipped set's items.
pub fn shipped() -> Result<Vec<Item>, WorkloadError> {
    parse("conversations.jsonl (shipped)", SHIPPED)
}

/// Reads and expands a conversation file.
pub fn load(path: &std::path::Path) -> Result<Vec<Item>, WorkloadError> {
    let (name, text) = super::read_dataset(path)?;
    parse(&name, &text)
}

/// One item per assistant turn of every conversation in `text`.
pub fn parse(path: &str, text: &str) -> Result<Vec<Item>, WorkloadError> {
    let mut items = Vec::new();
    super::for_each_line(path, text, |conv: Conversation| {
        check_turns(&conv.messages)?;
        for (i, m) in conv.messages.iter().enumerate() {
            if m.role == Role::Assistant {
                items.push(Item::new(Prompt::Chat(conv.messages[..i].to_vec())));
            }
        }
        Ok(())
    })?;
    if items.is_empty() {
        return Err(WorkloadError::File {
            path: path.to_string(),
            message: "no conversation with an assistant turn".into(),
        });
    }
    Ok(items)
}

/// An optional system message, then user/assistant alternating from a user.
fn check_turns(messages: &[Message]) -> Result<(), String> {
    let turns = match messages.first() {
        Some(m) if m.role == Role::System => &messages[1..],
        _ => messages,
    };
    for (i, m) in turns.iter().enumerate() {
        let want = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if m.role != want {
            return Err(format!(
                "turn {} is {:?}, expected {:?} (user and assistant alternate)",
                i + 1,
                m.role,
                want
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_set_expands_into_growing_chats() {
        let items = shipped().expect("shipped set");
        assert!(items.len() >= 64, "{}", items.len());
        let chats: Vec<&Vec<Message>> = items
            .iter()
            .map(|i| match &i.prompt {
                Prompt::Chat(m) => m,
                other => panic!("{other:?}"),
            })
            .collect();
        // Every request ends with a user turn; some are later turns whose
        // prompt extends the request before it.
        assert!(chats
            .iter()
            .all(|m| m.last().is_some_and(|l| l.role == Role::User)));
        let followups = chats
            .windows(2)
            .filter(|w| w[1].len() > w[0].len() && w[1][..w[0].len()] == w[0][..])
            .count();
        assert!(followups >= 32, "{followups}");
        let turns = chats.iter().map(|m| m.len()).max().unwrap_or(0);
        assert!(turns >= 7, "longest history {turns} messages");
    }

    #[test]
    fn malformed_conversations_are_refused() {
        let two_users = r#"{"id":"x","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#;
        let err = parse("c.jsonl", two_users)
            .expect_err("alternation")
            .to_string();
        assert!(err.contains("line 1") && err.contains("alternate"), "{err}");
        let no_answer = r#"{"id":"x","messages":[{"role":"user","content":"a"}]}"#;
        assert!(parse("c.jsonl", no_answer).is_err());
        let sys = r#"{"id":"x","messages":[{"role":"system","content":"s"},{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#;
        let items = parse("c.jsonl", sys).expect("system first");
        assert_eq!(items.len(), 1);
    }
}
