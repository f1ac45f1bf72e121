//! What to send. A [`Workload`] is a list of [`Item`]s cycled by request
//! index; the datasets build the items:
//!
//! - [`builtin`]: a dozen English prompts (the default);
//! - [`random`]: random token-id prompts of given lengths for the target
//!   model's tokenizer;
//! - [`conversations`]: the multi-turn chat set shipped with weft-load;
//! - [`jsonl`]: any JSONL file of prompts, optionally with the expected
//!   greedy output of each (see `--check`), also written by
//!   `--record-expected`.

pub mod builtin;
pub mod conversations;
pub mod jsonl;
pub mod random;

use crate::target::{GenRequest, Prompt};

/// Why a dataset cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}, line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Invalid(String),
}

/// Reads a dataset file; returns its name (for errors) and its text.
fn read_dataset(path: &std::path::Path) -> Result<(String, String), WorkloadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::File {
        path: name.clone(),
        message: e.to_string(),
    })?;
    Ok((name, text))
}

/// Parses each non-blank line of a JSONL text as a `T` and hands it to
/// `f`; a line that does not parse, or that `f` refuses, is an error
/// naming the file and the line.
fn for_each_line<T: serde::de::DeserializeOwned>(
    path: &str,
    text: &str,
    mut f: impl FnMut(T) -> Result<(), String>,
) -> Result<(), WorkloadError> {
    for (n, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let err = |message: String| WorkloadError::Line {
            path: path.to_string(),
            line: n + 1,
            message,
        };
        let value: T = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
        f(value).map_err(err)?;
    }
    Ok(())
}

/// The expected greedy output of an item (correctness mode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Output token ids; compared when the target reports ids (weft gRPC).
    pub ids: Option<Vec<u32>>,
    /// Output text; compared when ids cannot be.
    pub text: Option<String>,
}

impl Expected {
    /// True when there is nothing to compare.
    pub fn is_empty(&self) -> bool {
        self.ids.is_none() && self.text.is_none()
    }
}

/// One prompt of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub prompt: Prompt,
    /// Output tokens; `None` = the run's `--max-tokens`.
    pub max_tokens: Option<u32>,
    pub expected: Expected,
}

impl Item {
    /// An item with the run's output length and no expectation.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            max_tokens: None,
            expected: Expected::default(),
        }
    }
}

/// The prompt sequence of a run.
#[derive(Debug, Clone)]
pub struct Workload {
    items: Vec<Item>,
    max_tokens: u32,
    unique_prompts: bool,
}

impl Workload {
    /// Request `i` is `items[i % items.len()]`, asking for the item's own
    /// output length or else `max_tokens`. With `unique_prompts`, each text
    /// prompt (or a conversation's first message) starts with its request
    /// index, so no two requests share a prefix a server could serve from
    /// its prefix cache; token-id prompts are left as they are.
    pub fn new(
        items: Vec<Item>,
        max_tokens: u32,
        unique_prompts: bool,
    ) -> Result<Self, WorkloadError> {
        if items.is_empty() {
            return Err(WorkloadError::Invalid("the dataset has no prompt".into()));
        }
        Ok(Self {
            items,
            max_tokens,
            unique_prompts,
        })
    }

    /// The built-in prompts.
    pub fn builtin(max_tokens: u32, unique_prompts: bool) -> Self {
        Self {
            items: builtin::items(),
            max_tokens,
            unique_prompts,
        }
    }

    /// Distinct items; request `i` uses item `i % len()`.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Never true: a workload has at least one item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The item request `index` uses.
    pub fn item(&self, index: usize) -> &Item {
        &self.items[index % self.items.len()]
    }

    /// The output length request `index` asks for.
    pub fn max_tokens(&self, index: usize) -> u32 {
        self.item(index).max_tokens.unwrap_or(self.max_tokens)
    }

    /// Whether every item carries an expected output.
    pub fn all_expected(&self) -> bool {
        self.items.iter().all(|i| !i.expected.is_empty())
    }

    /// The request with global index `index` (warm-up requests come first).
    pub fn request(&self, index: usize) -> GenRequest {
        let item = self.item(index);
        let prompt = match (&item.prompt, self.unique_prompts) {
            (Prompt::Text(t), true) => Prompt::Text(format!("Request {index}. {t}")),
            (Prompt::Chat(messages), true) => {
                let mut messages = messages.clone();
                if let Some(first) = messages.first_mut() {
                    first.content = format!("Request {index}. {}", first.content);
                }
                Prompt::Chat(messages)
            }
            (p, _) => p.clone(),
        };
        GenRequest {
            prompt,
            max_tokens: self.max_tokens(index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Message, Role};

    #[test]
    fn builtin_prompts_cycle() {
        let w = Workload::builtin(32, false);
        let n = builtin::PROMPTS.len();
        assert_eq!(w.len(), n);
        assert_eq!(
            w.request(0).prompt,
            Prompt::Text(builtin::PROMPTS[0].into())
        );
        assert_eq!(w.request(n + 3), w.request(3));
        assert_eq!(w.request(5).max_tokens, 32);
    }

    #[test]
    fn unique_prompts_differ_from_the_start() {
        let w = Workload::builtin(8, true);
        let text = |i| match w.request(i).prompt {
            Prompt::Text(t) => t,
            other => panic!("{other:?}"),
        };
        let (a, b) = (text(1), text(1 + builtin::PROMPTS.len()));
        assert_ne!(a, b);
        assert!(a.ends_with(builtin::PROMPTS[1]));
        assert!(b.starts_with("Request 13."));
    }

    #[test]
    fn item_lengths_override_and_ids_stay_unchanged() {
        let chat = Prompt::Chat(vec![Message {
            role: Role::User,
            content: "hi".into(),
        }]);
        let mut long = Item::new(Prompt::Ids(vec![5, 6]));
        long.max_tokens = Some(3);
        let w = Workload::new(vec![long, Item::new(chat)], 9, true).expect("workload");
        assert_eq!(
            w.request(0),
            GenRequest {
                prompt: Prompt::Ids(vec![5, 6]),
                max_tokens: 3
            }
        );
        match w.request(1).prompt {
            Prompt::Chat(m) => assert_eq!(m[0].content, "Request 1. hi"),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.max_tokens(1), 9);
        assert!(!w.all_expected());
        assert!(Workload::new(Vec::new(), 1, false).is_err());
    }
}
