//! A compiled chat template and its render context.
//!
//! The environment mirrors transformers' `_compile_jinja_template`:
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with
//! the loopcontrols extension, the globals `raise_exception` and
//! `strftime_now`, and a `tojson` filter that behaves like Python's
//! `json.dumps` (no HTML escaping). Python string/dict methods (`.strip()`,
//! `.split()`, `.items()`, ...) come from minijinja-contrib's pycompat.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};

use super::tojson;

/// Name of the one template in a [`ChatTemplate`]'s environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Errors while loading, compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template does not compile.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// The template called `raise_exception(msg)`; carries `msg` verbatim.
    /// This is the client's fault (e.g. roles in an order the model does not
    /// accept), so servers answer it as an invalid argument.
    #[error("{0}")]
    Raised(String),
    /// Any other failure while rendering.
    #[error("chat template rendering failed: {0}")]
    Render(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A malformed tokenizer_config.json.
    #[error("tokenizer config: {0}")]
    Json(String),
}

/// The author of one chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// Every role, in the order error messages list them.
    pub const ALL: [Role; 4] = [Role::System, Role::User, Role::Assistant, Role::Tool];

    /// The role's name as chat templates see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of \"system\", \"user\", \"assistant\", \"tool\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A message as the template sees it: a dict `{"role": ..., "content": ...}`
/// whose keys enumerate in that order (as a Python dict would), so
/// `message | tojson` and `message.items()` match transformers.
#[derive(Debug)]
struct MessageValue {
    role: Role,
    content: Value,
}

impl Object for MessageValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role.as_str())),
            "content" => Some(self.content.clone()),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// Marks the error `raise_exception` returns, so that it can be told apart
/// from other render errors after minijinja has propagated it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Raised(String);

/// The `raise_exception(msg)` global: aborts rendering with `msg`.
fn raise_exception(msg: Value) -> Result<Value, Error> {
    let msg = match msg.as_str() {
        Some(s) => s.to_string(),
        None => msg.to_string(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

/// The `strftime_now(fmt)` global: the local time formatted with `fmt`.
fn strftime_now(format: &str) -> Result<String, Error> {
    let mut out = String::new();
    // Writing (not `to_string`) so that a bad format is an error, not a panic.
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Prints `{{ true }}`, `{{ none }}` as Python's Jinja does (`True`,
/// `None`); everything else as minijinja does.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text).map_err(Error::from)
}

/// `Raised(msg)` when `err` came from `raise_exception`, else `Render`.
fn render_error(err: &Error) -> TemplateError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(Raised(msg)) = e.downcast_ref::<Raised>() {
            return TemplateError::Raised(msg.clone());
        }
        cur = e.source();
    }
    TemplateError::Render(err.to_string())
}

/// A compiled chat template plus the special tokens its context exposes.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` once; a syntax error is [`TemplateError::Syntax`].
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_formatter(python_formatter);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson::tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(Self {
            env,
            source,
            bos_token,
            eos_token,
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `bos_token` the template sees (empty when unknown).
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The `eos_token` the template sees (empty when unknown).
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Whether the template knows about `<think>` reasoning blocks.
    pub fn supports_reasoning(&self) -> bool {
        self.source.contains("<think>")
    }

    /// Renders `messages` into a prompt. The context holds exactly
    /// `messages`, `add_generation_prompt`, `bos_token` and `eos_token`;
    /// message content is data and is never evaluated as template syntax.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_object(MessageValue {
                    role: m.role,
                    content: Value::from(m.content.as_str()),
                })
            })
            .collect();
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        template.render(ctx).map_err(|e| render_error(&e))
    }
}
