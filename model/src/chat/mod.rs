//! Chat templates (Hugging Face Jinja templates rendered with minijinja the
//! way transformers renders them) and the streaming split of a reasoning
//! model's output into reasoning and answer text.

mod load;
pub mod reasoning;
mod template;
mod tojson;

pub use reasoning::{prompt_opens_reasoning, split_reasoning, ReasoningDelta, ReasoningParser};
pub use template::{ChatMessage, ChatTemplate, Role, TemplateError, UnknownRole};

#[cfg(test)]
mod tests;
