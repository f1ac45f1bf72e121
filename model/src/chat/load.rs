//! Finding a checkpoint's chat template: Hugging Face `tokenizer_config.json`
//! (and `chat_template.jinja`) or GGUF metadata.

use std::path::Path;

use serde_json::Value as Json;

use super::template::{ChatTemplate, TemplateError};
use crate::checkpoint::Checkpoint;
use crate::gguf::GgufFile;

/// What a tokenizer_config.json says about chat formatting.
struct TokenizerConfig {
    chat_template: Option<String>,
    bos_token: String,
    eos_token: String,
}

fn read(path: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `chat_template`: a string, or a list of `{"name", "template"}` (the one
/// named "default", else the first).
fn parse_chat_template(v: Option<&Json>) -> Result<Option<String>, TemplateError> {
    let list = match v {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::String(s)) => return Ok(Some(s.clone())),
        Some(Json::Array(list)) => list,
        Some(_) => {
            return Err(TemplateError::Json(
                "chat_template must be a string or a list of {name, template}".into(),
            ))
        }
    };
    let named = |name: &str| {
        list.iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some(name))
    };
    let Some(entry) = named("default").or_else(|| list.first()) else {
        return Ok(None);
    };
    match entry.get("template") {
        Some(Json::String(s)) => Ok(Some(s.clone())),
        _ => Err(TemplateError::Json(
            "chat_template list entry has no \"template\" string".into(),
        )),
    }
}

/// A special token: a string, an AddedToken object `{"content": ...}`, or
/// null/absent (empty).
fn parse_token(v: Option<&Json>, key: &str) -> Result<String, TemplateError> {
    match v {
        None | Some(Json::Null) => Ok(String::new()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(obj @ Json::Object(_)) => match obj.get("content") {
            Some(Json::String(s)) => Ok(s.clone()),
            _ => Err(TemplateError::Json(format!(
                "{key} object has no \"content\" string"
            ))),
        },
        Some(_) => Err(TemplateError::Json(format!(
            "{key} must be a string, an object with \"content\" or null"
        ))),
    }
}

fn parse_tokenizer_config(text: &str) -> Result<TokenizerConfig, TemplateError> {
    let json: Json = serde_json::from_str(text).map_err(|e| TemplateError::Json(e.to_string()))?;
    if !json.is_object() {
        return Err(TemplateError::Json("expected a JSON object".into()));
    }
    Ok(TokenizerConfig {
        chat_template: parse_chat_template(json.get("chat_template"))?,
        bos_token: parse_token(json.get("bos_token"), "bos_token")?,
        eos_token: parse_token(json.get("eos_token"), "eos_token")?,
    })
}

impl ChatTemplate {
    /// The chat template of a Hugging Face `tokenizer_config.json`, with its
    /// `bos_token` / `eos_token`; Ok(None) when it has no `chat_template`.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>, TemplateError> {
        let cfg = parse_tokenizer_config(&read(path)?)?;
        cfg.chat_template
            .map(|src| Self::new(src, cfg.bos_token, cfg.eos_token))
            .transpose()
    }

    /// The chat template in a Hugging Face model folder: `chat_template.jinja`
    /// when present (it takes precedence, as in transformers), else
    /// `tokenizer_config.json`'s `chat_template`. Special tokens come from
    /// tokenizer_config.json. Ok(None) when neither holds a template.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>, TemplateError> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.is_file() {
            parse_tokenizer_config(&read(&cfg_path)?)?
        } else {
            TokenizerConfig {
                chat_template: None,
                bos_token: String::new(),
                eos_token: String::new(),
            }
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.is_file() {
            Some(read(&jinja_path)?)
        } else {
            cfg.chat_template
        };
        source
            .map(|src| Self::new(src, cfg.bos_token, cfg.eos_token))
            .transpose()
    }

    /// The template in GGUF metadata `tokenizer.chat_template`; bos/eos are
    /// the vocabulary entries at `tokenizer.ggml.{bos,eos}_token_id` (empty
    /// when absent). Ok(None) when the file has no template.
    pub fn from_gguf(file: &GgufFile) -> Result<Option<Self>, TemplateError> {
        let Some(source) = file.get_str("tokenizer.chat_template") else {
            return Ok(None);
        };
        let tokens = file.get_str_array("tokenizer.ggml.tokens");
        let token = |key: &str| -> String {
            let id = file.get_u32(key).and_then(|id| usize::try_from(id).ok());
            match (id, &tokens) {
                (Some(id), Some(tokens)) => tokens.get(id).map(|s| s.to_string()),
                _ => None,
            }
            .unwrap_or_default()
        };
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        Self::new(source.to_string(), bos, eos).map(Some)
    }

    /// The chat template of an opened checkpoint: GGUF metadata, or the
    /// files beside a safetensors checkpoint (its folder, or the folder of
    /// the .safetensors file it was opened from). Ok(None) when none.
    pub fn for_checkpoint(ckpt: &Checkpoint) -> Result<Option<Self>, TemplateError> {
        if let Some(gguf) = ckpt.gguf() {
            return Self::from_gguf(gguf);
        }
        let path = ckpt.path();
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        Self::from_hf_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tpl(v: Json) -> Result<Option<String>, TemplateError> {
        parse_chat_template(Some(&v))
    }

    #[test]
    fn chat_template_forms() {
        assert_eq!(tpl(json!("x")).ok().flatten().as_deref(), Some("x"));
        assert_eq!(tpl(Json::Null).ok().flatten(), None);
        assert_eq!(parse_chat_template(None).ok().flatten(), None);
        assert_eq!(tpl(json!([])).ok().flatten(), None);
        let named = json!([
            {"name": "tool_use", "template": "t"},
            {"name": "default", "template": "d"},
        ]);
        assert_eq!(tpl(named).ok().flatten().as_deref(), Some("d"));
        let first = json!([{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]);
        assert_eq!(tpl(first).ok().flatten().as_deref(), Some("A"));
        assert!(matches!(tpl(json!(3)), Err(TemplateError::Json(_))));
        assert!(matches!(
            tpl(json!([{"name": "default"}])),
            Err(TemplateError::Json(_))
        ));
    }

    #[test]
    fn token_forms() {
        let tok = |v: Json| parse_token(Some(&v), "bos_token").ok();
        assert_eq!(tok(json!("<s>")).as_deref(), Some("<s>"));
        assert_eq!(
            tok(json!({"content": "<s>", "lstrip": false, "__type": "AddedToken"})).as_deref(),
            Some("<s>")
        );
        assert_eq!(tok(Json::Null).as_deref(), Some(""));
        assert_eq!(parse_token(None, "eos_token").ok().as_deref(), Some(""));
        assert!(tok(json!(1)).is_none());
        assert!(tok(json!({"id": 1})).is_none());
    }

    #[test]
    fn config_without_template_is_none() {
        let cfg = parse_tokenizer_config(r#"{"bos_token": "<s>"}"#).ok();
        assert!(cfg.is_some_and(|c| c.chat_template.is_none() && c.bos_token == "<s>"));
        assert!(matches!(
            parse_tokenizer_config("[1]"),
            Err(TemplateError::Json(_))
        ));
        assert!(matches!(
            parse_tokenizer_config("{"),
            Err(TemplateError::Json(_))
        ));
    }
}
