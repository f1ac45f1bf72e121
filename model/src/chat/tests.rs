//! Chat template tests. Expected strings are written out by hand from the
//! Jinja semantics (and were cross-checked against Python jinja2's
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`).

use std::path::Path;

use serde_json::json;

use super::*;

/// tokenizer.chat_template of SmolLM2-135M-Instruct.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}";

const SMOLLM2_HI: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
    trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";

/// In the style of Meta's Llama 3.1 instruct template (tools left out), with
/// a namespace-based role check.
const LLAMA31: &str = r#"{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- set ns = namespace(expect_user=true) %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != ns.expect_user %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set ns.expect_user = not ns.expect_user %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'].strip() + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

/// In the style of DeepSeek-R1-Distill's template (tool calls left out).
const DEEPSEEK_R1: &str = r#"{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{% if add_generation_prompt %}{{'<｜Assistant｜><think>\n'}}{% endif %}"#;

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

fn compile(source: &str) -> ChatTemplate {
    ChatTemplate::new(source.to_string(), "<s>".into(), "</s>".into()).expect("template compiles")
}

fn render(t: &ChatTemplate, messages: &[ChatMessage], gen: bool) -> String {
    t.render(messages, gen).expect("template renders")
}

fn write_config(dir: &Path, config: &serde_json::Value) -> std::path::PathBuf {
    let path = dir.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(config).expect("json");
    std::fs::write(&path, text).expect("write tokenizer_config.json");
    path
}

#[test]
fn template_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<ChatTemplate>();
    assert_send_sync::<ReasoningParser>();
}

#[test]
fn role_names_round_trip() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
    }
    let err = "developer".parse::<Role>().expect_err("unknown role");
    let text = err.to_string();
    assert!(text.contains("developer"), "{text}");
    for name in ["system", "user", "assistant", "tool"] {
        assert!(text.contains(name), "{text}");
    }
    assert!("User".parse::<Role>().is_err());
}

#[test]
fn smollm2_without_system_message() {
    let t = compile(SMOLLM2);
    let messages = [msg(Role::User, "Hi")];
    assert_eq!(render(&t, &messages, true), SMOLLM2_HI);
    assert_eq!(
        render(&t, &messages, false),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    assert!(!t.supports_reasoning());
    assert_eq!(t.source(), SMOLLM2);
}

#[test]
fn smollm2_with_system_message_and_history() {
    let t = compile(SMOLLM2);
    let messages = [
        msg(Role::System, "Be brief."),
        msg(Role::User, "Hi"),
        msg(Role::Assistant, "Hello!"),
        msg(Role::User, "2+2?"),
    ];
    let body = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n";
    assert_eq!(render(&t, &messages, false), body);
    assert_eq!(
        render(&t, &messages, true),
        format!("{body}<|im_start|>assistant\n")
    );
}

#[test]
fn content_is_data_not_template_syntax() {
    let t = compile(SMOLLM2);
    let messages = [
        msg(Role::System, "{{ 7*7 }}"),
        msg(
            Role::User,
            "{% raw %}{{ bos_token }}{% if true %}x{% endif %}{# c #}",
        ),
    ];
    assert_eq!(
        render(&t, &messages, false),
        "<|im_start|>system\n{{ 7*7 }}<|im_end|>\n<|im_start|>user\n\
         {% raw %}{{ bos_token }}{% if true %}x{% endif %}{# c #}<|im_end|>\n"
    );
}

#[test]
fn context_holds_exactly_four_variables() {
    let src = "{{ messages|length }}|{{ add_generation_prompt }}|{{ bos_token }}|{{ eos_token }}|\
               {{ tools is defined }}|{{ date_string is defined }}|{{ messages[0].role }}";
    let t = compile(src);
    assert_eq!(
        render(&t, &[msg(Role::Tool, "x")], true),
        "1|True|<s>|</s>|False|False|tool"
    );
}

#[test]
fn llama31_style_template_from_tokenizer_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &json!({
            "bos_token": {"__type": "AddedToken", "content": "<|begin_of_text|>",
                          "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
            "eos_token": "<|eot_id|>",
            "chat_template": LLAMA31,
        }),
    );
    let t = ChatTemplate::from_tokenizer_config(&path)
        .expect("config loads")
        .expect("config has a template");
    assert_eq!(t.bos_token(), "<|begin_of_text|>");
    assert_eq!(t.eos_token(), "<|eot_id|>");
    let messages = [
        msg(Role::System, "  You are a pirate.\n"),
        msg(Role::User, " Hello \n"),
        msg(Role::Assistant, "Arr!"),
        msg(Role::User, "Bye"),
    ];
    let before = chrono::Local::now().format("%d %b %Y").to_string();
    let got = render(&t, &messages, true);
    let after = chrono::Local::now().format("%d %b %Y").to_string();
    let expected = |date: &str| {
        format!(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n\
             You are a pirate.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nArr!<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    };
    assert!(
        got == expected(&before) || got == expected(&after),
        "{got:?}"
    );

    // Two user turns in a row hit the template's raise_exception.
    let bad = [msg(Role::User, "a"), msg(Role::User, "b")];
    match t.render(&bad, true) {
        Err(TemplateError::Raised(m)) => assert_eq!(
            m,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("expected Raised, got {other:?}"),
    }
}

#[test]
fn deepseek_r1_style_template_from_named_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &json!({
            "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>"},
            "eos_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>"},
            "unk_token": null,
            "chat_template": [
                {"name": "tool_use", "template": "WRONG TEMPLATE"},
                {"name": "default", "template": DEEPSEEK_R1},
            ],
        }),
    );
    let t = ChatTemplate::from_tokenizer_config(&path)
        .expect("config loads")
        .expect("config has a template");
    assert!(t.supports_reasoning());
    let messages = [
        msg(Role::System, "You are helpful."),
        msg(Role::User, "What is 2+2?"),
        msg(Role::Assistant, "<think>\nsimple\n</think>\n\n4"),
        msg(Role::User, "And 3+3?"),
    ];
    let prompt = render(&t, &messages, true);
    assert_eq!(
        prompt,
        "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>What is 2+2?\
         <｜Assistant｜>\n\n4<｜end▁of▁sentence｜><｜User｜>And 3+3?<｜Assistant｜><think>\n"
    );
    assert!(prompt_opens_reasoning(&prompt));
    let no_gen = render(&t, &messages, false);
    assert!(no_gen.ends_with("<｜User｜>And 3+3?"));
    assert!(!prompt_opens_reasoning(&no_gen));

    let smol = render(&compile(SMOLLM2), &[msg(Role::User, "Hi")], true);
    assert!(!prompt_opens_reasoning(&smol));
}

#[test]
fn raise_exception_is_a_distinct_error() {
    let t = compile(
        "{% macro check(m) %}{% if m.role == 'tool' %}{{ raise_exception('no tools: ' ~ m.content) }}\
         {% endif %}{% endmacro %}{% for m in messages %}{{ check(m) }}{{ m.content }}{% endfor %}",
    );
    assert_eq!(render(&t, &[msg(Role::User, "ok")], false), "ok");
    match t.render(&[msg(Role::User, "a"), msg(Role::Tool, "x")], false) {
        Err(TemplateError::Raised(m)) => assert_eq!(m, "no tools: x"),
        other => panic!("expected Raised, got {other:?}"),
    }
    // Other failures are Render errors.
    let t = compile("{{ messages[0].content.nope() }}");
    assert!(matches!(
        t.render(&[msg(Role::User, "a")], false),
        Err(TemplateError::Render(_))
    ));
}

#[test]
fn syntax_error_is_reported() {
    let err = ChatTemplate::new(
        "{% for m in messages %}".into(),
        String::new(),
        String::new(),
    )
    .expect_err("unclosed block");
    assert!(matches!(err, TemplateError::Syntax(_)), "{err:?}");
    let err = ChatTemplate::new("{{ 1 + }}".into(), String::new(), String::new())
        .expect_err("bad expression");
    assert!(matches!(err, TemplateError::Syntax(_)), "{err:?}");
}

#[test]
fn python_methods_and_loop_controls() {
    let src = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}\
               {% if m.role == 'system' %}{% continue %}{% endif %}\
               [{{ m.content.strip().upper() }}|{{ m.content.split(',')|length }}\
               |{{ m.content.startswith(' a') }}|{{ m.content.lstrip().replace('a', 'A') }}]\
               {% for k, v in m.items() %}{{ k }}={{ v|trim }};{% endfor %}{% endfor %}";
    let t = compile(src);
    let messages = [
        msg(Role::System, "sys"),
        msg(Role::User, " a,b "),
        msg(Role::User, "never"),
    ];
    assert_eq!(
        render(&t, &messages, false),
        "[A,B|2|True|A,b ]role=user;content=a,b;"
    );
}

#[test]
fn tojson_matches_python_json_dumps() {
    let t = compile(
        "{{ messages|tojson }}\n{{ messages[0]|tojson(indent=2) }}\n\
         {{ {'b': 1.5, 'a': [true, none, 3]}|tojson(sort_keys=true) }}\n\
         {{ 'é'|tojson(ensure_ascii=true) }}",
    );
    let got = render(&t, &[msg(Role::User, "<b> & 'x' \"q\"\n\té")], false);
    let want = "[{\"role\": \"user\", \"content\": \"<b> & 'x' \\\"q\\\"\\n\\té\"}]\n\
                {\n  \"role\": \"user\",\n  \"content\": \"<b> & 'x' \\\"q\\\"\\n\\té\"\n}\n\
                {\"a\": [true, null, 3], \"b\": 1.5}\n\
                \"\\u00e9\"";
    assert_eq!(got, want);
}

#[test]
fn strftime_now_formats_local_time() {
    let t = compile("{{ strftime_now('%Y') }}");
    let before = chrono::Local::now().format("%Y").to_string();
    let got = render(&t, &[], false);
    let after = chrono::Local::now().format("%Y").to_string();
    assert!(got == before || got == after, "{got:?}");
    let t = compile("{{ strftime_now('%Q') }}");
    assert!(matches!(
        t.render(&[], false),
        Err(TemplateError::Render(_))
    ));
}

#[test]
fn missing_chat_template_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &json!({"bos_token": "<s>", "eos_token": null}));
    assert!(ChatTemplate::from_tokenizer_config(&path)
        .expect("config loads")
        .is_none());
    let err = ChatTemplate::from_tokenizer_config(&dir.path().join("absent.json"))
        .expect_err("missing file");
    assert!(matches!(err, TemplateError::Io { .. }), "{err:?}");
}

#[test]
fn safetensors_checkpoint_finds_tokenizer_config() {
    use crate::checkpoint::Checkpoint;
    use crate::synthetic::{write_checkpoint, SyntheticSpec};

    let dir = tempfile::tempdir().expect("tempdir");
    write_checkpoint(dir.path(), &SyntheticSpec::tiny_llama()).expect("synthetic checkpoint");
    let ckpt = Checkpoint::open(dir.path()).expect("open dir");
    assert!(ChatTemplate::for_checkpoint(&ckpt)
        .expect("no template is fine")
        .is_none());

    write_config(
        dir.path(),
        &json!({"chat_template": SMOLLM2, "bos_token": null, "eos_token": "<|im_end|>"}),
    );
    let file = Checkpoint::open(&dir.path().join("model.safetensors")).expect("open file");
    for ckpt in [&ckpt, &file] {
        let t = ChatTemplate::for_checkpoint(ckpt)
            .expect("template loads")
            .expect("template found");
        assert_eq!(render(&t, &[msg(Role::User, "Hi")], true), SMOLLM2_HI);
        assert_eq!((t.bos_token(), t.eos_token()), ("", "<|im_end|>"));
    }

    // chat_template.jinja takes precedence over tokenizer_config.json.
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ eos_token }}!\n")
        .expect("write jinja");
    let t = ChatTemplate::for_checkpoint(&ckpt)
        .expect("template loads")
        .expect("template found");
    assert_eq!(render(&t, &[], false), "<|im_end|>!");
}

#[test]
fn smollm2_gguf_template() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
    ));
    if !path.is_file() {
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let gguf = crate::gguf::GgufFile::open(path).expect("open gguf");
    let t = ChatTemplate::from_gguf(&gguf)
        .expect("template compiles")
        .expect("gguf has a template");
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens").expect("vocab");
    let token = |key: &str| tokens[gguf.get_u32(key).expect(key) as usize];
    assert_eq!(t.bos_token(), token("tokenizer.ggml.bos_token_id"));
    assert_eq!(t.eos_token(), token("tokenizer.ggml.eos_token_id"));
    assert_eq!(t.eos_token(), "<|im_end|>");
    assert_eq!(render(&t, &[msg(Role::User, "Hi")], true), SMOLLM2_HI);

    let ckpt = crate::checkpoint::Checkpoint::open(path).expect("open checkpoint");
    let t = ChatTemplate::for_checkpoint(&ckpt)
        .expect("template compiles")
        .expect("gguf has a template");
    assert_eq!(render(&t, &[msg(Role::User, "Hi")], true), SMOLLM2_HI);
}
