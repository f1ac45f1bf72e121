use super::*;
use std::sync::OnceLock;

fn enc(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).expect("encode")
}

fn dec(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.decode(ids).expect("decode")
}

fn roundtrip(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let ids = enc(tok, text);
    assert_eq!(dec(tok, &ids), text, "ids {ids:?}");
    ids
}

/// A small byte-level BPE: two specials, the 256 GPT-2 byte chars (in
/// byte order, so byte b is id 2 + b), then `extra`.
fn synthetic(pre: Option<&str>, extra: &[&str], merges: &[&str]) -> GgufTokenizerData {
    let printable = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 255;
    let bytes = (0u32..256).map(|b| {
        shifted += u32::from(!printable(b));
        let c = if printable(b) { b } else { shifted };
        char::from_u32(c).map(String::from).unwrap_or_default()
    });
    let mut tokens = vec!["<|endoftext|>".to_owned(), "<|im_start|>".to_owned()];
    tokens.extend(bytes.chain(extra.iter().map(|s| s.to_string())));
    let mut token_types = vec![1; tokens.len()];
    token_types[..2].fill(TOKEN_TYPE_CONTROL);
    GgufTokenizerData {
        model: "gpt2".into(),
        pre: pre.map(str::to_owned),
        tokens,
        token_types,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        bos_token_id: Some(1),
        eos_token_id: Some(0),
        add_bos: false,
    }
}

fn build(data: GgufTokenizerData) -> Tokenizer {
    Tokenizer::from_gguf_data(data).expect("synthetic tokenizer")
}

fn small() -> Tokenizer {
    let merges = ["h e", "Ġ t", "Ġt he", "1 2"];
    build(synthetic(
        Some("smollm"),
        &["he", "Ġt", "Ġthe", "12"],
        &merges,
    ))
}

/// Streams `ids` through an IncrementalDecoder; checks every delta is
/// free of U+FFFD and that they add up to the full decode.
fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut inc = IncrementalDecoder::new(tok);
    let mut deltas: Vec<String> = ids.iter().map(|&id| inc.push(id).expect("push")).collect();
    deltas.push(inc.finish().expect("finish"));
    assert!(!deltas.iter().any(|d| d.contains('\u{FFFD}')), "{deltas:?}");
    assert_eq!(deltas.concat(), dec(tok, ids));
    deltas
}

#[test]
fn synthetic_encode_decode() {
    let tok = small();
    assert_eq!(tok.vocab_size(), 2 + 256 + 4);
    assert_eq!(
        roundtrip(&tok, "a the"),
        [2 + 97, tok.token_to_id("Ġthe").expect("Ġthe")]
    );
    // smollm: every digit is its own pre-token, so the "1 2" merge never applies.
    assert_eq!(roundtrip(&tok, "12"), [2 + 49, 2 + 50]);
    let ids = roundtrip(&tok, "<|im_start|>user\nhé 🦀 東京<|endoftext|>");
    assert_eq!((ids[0], ids.last()), (1, Some(&0)));
    assert!(roundtrip(&tok, "").is_empty());
    let mut data = synthetic(None, &[], &[]);
    data.add_bos = true;
    let tok = build(data);
    assert_eq!(
        tok.encode("hi", true).expect("encode"),
        [1, 2 + 104, 2 + 105]
    );
    assert_eq!(enc(&tok, "hi"), [2 + 104, 2 + 105]);
}

#[test]
fn pre_tokenizer_variants() {
    // gpt2 keeps digit runs together, so the merge applies.
    let tok = build(synthetic(Some("gpt2"), &["12"], &["1 2"]));
    assert_eq!(roundtrip(&tok, "12"), [tok.token_to_id("12").expect("12")]);
    // llama-bpe: digits in groups of three; "123" is in the vocabulary
    // (merges ignored), then "4", "5" as bytes.
    let tok = build(synthetic(Some("llama-bpe"), &["123"], &[]));
    assert_eq!(roundtrip(&tok, "12345"), [2 + 256, 2 + 52, 2 + 53]);
    // Unknown names fall back to gpt2.
    let tok = build(synthetic(Some("no-such-pre"), &["12"], &["1 2"]));
    assert_eq!(roundtrip(&tok, "12").len(), 1);
}

#[test]
fn errors_are_reported() {
    let mut data = synthetic(None, &[], &[]);
    data.model = "llama".into();
    let err = Tokenizer::from_gguf_data(data).expect_err("llama is unsupported");
    assert!(matches!(err, TokenizerError::Unsupported(_)), "{err}");
    let bad_merge = synthetic(None, &[], &["nospace"]);
    let err = Tokenizer::from_gguf_data(bad_merge).expect_err("bad merge");
    assert!(matches!(err, TokenizerError::Invalid(_)), "{err}");
    let mut bad_types = synthetic(None, &[], &[]);
    bad_types.token_types.pop();
    let err = Tokenizer::from_gguf_data(bad_types).expect_err("bad types");
    assert!(matches!(err, TokenizerError::Invalid(_)), "{err}");
    let tok = small();
    let err = tok.decode(&[5, 1_000_000]).expect_err("unknown id");
    assert!(
        matches!(err, TokenizerError::UnknownId { id: 1_000_000, .. }),
        "{err}"
    );
    let mut inc = IncrementalDecoder::new(&tok);
    assert!(inc.push(1_000_000).is_err());
    assert_eq!(inc.push(2 + 97).expect("push after error"), "a");
    let missing = Path::new("/nonexistent/tokenizer.json");
    let err = Tokenizer::from_hf_file(missing).expect_err("missing file");
    assert!(matches!(err, TokenizerError::Load { .. }), "{err}");
}

#[test]
fn incremental_holds_back_split_characters() {
    let tok = small();
    // No merges for these: each byte is its own token.
    let ids = enc(&tok, "a🦀é東");
    let want = ["a", "", "", "", "🦀", "", "é", "", "", "東", ""];
    assert_eq!(stream(&tok, &ids), want);
}

#[test]
fn incremental_finish_flushes_incomplete_bytes() {
    let tok = small();
    let ids = enc(&tok, "x🦀");
    let mut inc = IncrementalDecoder::new(&tok);
    let out: Vec<String> = ids[..3]
        .iter()
        .map(|&id| inc.push(id).expect("push"))
        .collect();
    assert_eq!(out.concat(), "x");
    let rest = inc.finish().expect("finish");
    assert!(rest.contains('\u{FFFD}'), "{rest:?}");
    assert_eq!(inc.finish().expect("finish again"), "");
}

#[test]
fn hf_file_matches_gguf_build() {
    let tok = small();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    tok.inner.save(&path, false).expect("save tokenizer.json");
    let hf = Tokenizer::from_hf_file(&path).expect("load tokenizer.json");
    for text in ["a the 12", "<|im_start|>hé 🦀"] {
        assert_eq!(enc(&hf, text), enc(&tok, text), "{text}");
    }
    assert_eq!(hf.vocab_size(), tok.vocab_size());
}

// ---- against the real SmolLM2 GGUF (skipped when it is absent) ----

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn smollm2() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = repo_path("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.exists() {
            eprintln!(
                "skipping: {} absent (scripts/fetch-model.sh)",
                path.display()
            );
            return None;
        }
        let file = GgufFile::open(&path).expect("open gguf");
        Some(Tokenizer::from_gguf(&file).expect("tokenizer from gguf"))
    })
    .as_ref()
}

#[test]
fn smollm2_golden_prompt_ids() {
    let Some(tok) = smollm2() else { return };
    let path = repo_path("tests/golden/smollm2_greedy.json");
    let text = std::fs::read_to_string(&path).expect("golden file");
    let golden: serde_json::Value = serde_json::from_str(&text).expect("golden json");
    let prompts = golden["prompts"].as_array().expect("prompts");
    assert!(prompts.len() >= 5);
    let ids_of = |v: &serde_json::Value| -> Vec<u32> {
        let arr = v.as_array().expect("id array");
        let id = |x: &serde_json::Value| x.as_u64().and_then(|x| u32::try_from(x).ok());
        arr.iter().map(|x| id(x).expect("id")).collect()
    };
    for p in prompts {
        let prompt = p["prompt"].as_str().expect("prompt");
        let want = ids_of(&p["prompt_ids"]);
        assert_eq!(enc(tok, prompt), want, "{prompt:?}");
        // add_bos_token is false for this model: no BOS either way.
        assert_eq!(
            tok.encode(prompt, true).expect("encode"),
            want,
            "{prompt:?}"
        );
        assert_eq!(dec(tok, &want), prompt);
        let generated = ids_of(&p["tokens"]);
        let text = dec(tok, &generated);
        assert_eq!(text, p["text"].as_str().expect("text"));
        assert_eq!(stream(tok, &generated).concat(), text);
    }
}

#[test]
fn smollm2_roundtrip_and_specials() {
    let Some(tok) = smollm2() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_token_id(), tok.eos_token_id()), (Some(1), Some(2)));
    for text in [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "  leading spaces\tand\ttabs\n\nnew lines  ",
        "naïve café, Übermaß, Ελληνικά, русский, 日本語のテキスト, 한국어",
        "emoji: 🦀🚀👩‍👩‍👧‍👦 🇫🇷 ❤️",
        "<|im_start|>user\nHi 👋<|im_end|>\n<|im_start|>assistant\n",
        "digits 1234567890 3.14159",
    ] {
        roundtrip(tok, text);
    }
    assert_eq!(enc(tok, "<|im_start|>user<|im_end|>"), [1, 4093, 2]);
    // \p{N} pieces are single digits.
    assert_eq!(enc(tok, "2024").len(), 4);
}

#[test]
fn smollm2_incremental_emoji_and_cjk() {
    let Some(tok) = smollm2() else { return };
    for text in [
        "Crab 🦀 and 🚀 and 🗼!",
        "東京タワーは日本の電波塔です。",
        "👩‍👩‍👧‍👦🇫🇷",
    ] {
        let deltas = stream(tok, &enc(tok, text));
        assert_eq!(deltas.concat(), text);
        if text.starts_with("Crab") {
            assert!(
                deltas.iter().any(String::is_empty),
                "nothing held back: {deltas:?}"
            );
        }
    }
}

#[test]
fn added_token_ids_are_the_control_tokens() {
    let tok = small();
    // The two control tokens of `synthetic`, nothing from the byte vocabulary.
    assert_eq!(tok.added_token_ids(), [0, 1]);
    assert!(enc(&tok, "hello there").iter().all(|id| *id > 1));
}
