//! Random prompts of given lengths, as token ids of the target model (as
//! vLLM's `random` dataset): each prompt's length is drawn uniformly from
//! `[L(1-r), L(1+r)]`, its ids are random ordinary tokens, decoded to text
//! and tokenized again (so the ids are a real tokenization of some text),
//! then cut to the drawn length. The output length is drawn the same way.
//! Token-id prompts make the input length exact on every server.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_model::tokenizer::Tokenizer;

use super::{Item, WorkloadError};
use crate::target::Prompt;

/// What the random dataset needs of a tokenizer.
pub trait Vocabulary {
    /// Ids are `0..vocab_size()`.
    fn vocab_size(&self) -> usize;
    /// Ids never to draw (special and added tokens). Sorted.
    fn excluded(&self) -> Vec<u32>;
    fn decode(&self, ids: &[u32]) -> Result<String, WorkloadError>;
    /// Tokenizes without adding BOS or other special tokens.
    fn encode(&self, text: &str) -> Result<Vec<u32>, WorkloadError>;
}

impl Vocabulary for Tokenizer {
    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }
    fn excluded(&self) -> Vec<u32> {
        self.added_token_ids()
    }
    fn decode(&self, ids: &[u32]) -> Result<String, WorkloadError> {
        Tokenizer::decode(self, ids).map_err(|e| WorkloadError::Tokenizer(e.to_string()))
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, WorkloadError> {
        Tokenizer::encode(self, text, false).map_err(|e| WorkloadError::Tokenizer(e.to_string()))
    }
}

/// Loads the target model's tokenizer: a GGUF file, a `tokenizer.json`,
/// or a folder holding a `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, WorkloadError> {
    let fail = |e: &dyn std::fmt::Display| {
        WorkloadError::Tokenizer(format!("cannot load {}: {e}", path.display()))
    };
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let file = weft_model::gguf::GgufFile::open(path).map_err(|e| fail(&e))?;
        return Tokenizer::from_gguf(&file).map_err(|e| fail(&e));
    }
    let json = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    Tokenizer::from_hf_file(&json).map_err(|e| fail(&e))
}

/// The random dataset's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomSpec {
    /// Mean prompt length in tokens.
    pub input_len: u32,
    /// Mean output length in tokens.
    pub output_len: u32,
    /// Lengths are drawn from `[len * (1 - r), len * (1 + r)]`, `0 <= r < 1`.
    pub range_ratio: f64,
    pub seed: u64,
    /// Prompts to make (one per request, so none repeats).
    pub count: usize,
}

/// Draws a length in `[len(1-r), len(1+r)]`, at least 1.
pub fn draw_len(rng: &mut impl Rng, len: u32, ratio: f64) -> u32 {
    let low = (f64::from(len) * (1.0 - ratio)).floor().max(1.0) as u32;
    let high = ((f64::from(len) * (1.0 + ratio)).ceil() as u32).max(low);
    rng.random_range(low..=high)
}

/// `spec.count` random items.
pub fn items(vocab: &dyn Vocabulary, spec: &RandomSpec) -> Result<Vec<Item>, WorkloadError> {
    if !(0.0..1.0).contains(&spec.range_ratio) {
        return Err(WorkloadError::Invalid(
            "--random-range-ratio must be in [0, 1)".into(),
        ));
    }
    let pool = ordinary_ids(vocab)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut items = Vec::with_capacity(spec.count);
    for _ in 0..spec.count {
        let input_len = draw_len(&mut rng, spec.input_len, spec.range_ratio) as usize;
        let output_len = draw_len(&mut rng, spec.output_len, spec.range_ratio);
        let ids = prompt_ids(vocab, &pool, &mut rng, input_len)?;
        let mut item = Item::new(Prompt::Ids(ids));
        item.max_tokens = Some(output_len);
        items.push(item);
    }
    Ok(items)
}

/// The ids that may be drawn: all but the excluded ones.
fn ordinary_ids(vocab: &dyn Vocabulary) -> Result<Vec<u32>, WorkloadError> {
    let excluded = vocab.excluded();
    let size = u32::try_from(vocab.vocab_size())
        .map_err(|_| WorkloadError::Tokenizer("vocabulary too large".into()))?;
    let pool: Vec<u32> = (0..size)
        .filter(|id| excluded.binary_search(id).is_err())
        .collect();
    if pool.is_empty() {
        return Err(WorkloadError::Tokenizer(
            "no ordinary token in the vocabulary".into(),
        ));
    }
    Ok(pool)
}

/// Exactly `len` ids: random ordinary tokens decoded and re-tokenized,
/// topped up until long enough, then cut.
fn prompt_ids(
    vocab: &dyn Vocabulary,
    pool: &[u32],
    rng: &mut StdRng,
    len: usize,
) -> Result<Vec<u32>, WorkloadError> {
    let mut ids = Vec::with_capacity(len + 8);
    // Each round adds at least one id, or fails after a few rounds if the
    // tokenizer turns the text into nothing.
    for _ in 0..len + 16 {
        if ids.len() >= len {
            ids.truncate(len);
            return Ok(ids);
        }
        let want = len - ids.len();
        let drawn: Vec<u32> = (0..want)
            .map(|_| pool[rng.random_range(0..pool.len())])
            .collect();
        let text = vocab.decode(&drawn)?;
        ids.extend(vocab.encode(&text)?);
    }
    Err(WorkloadError::Tokenizer(
        "random text does not tokenize back into tokens".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids 0..=2 are special; id k >= 3 is the letter ('a' + k - 3) and
    /// "ab" merges into one token, so re-tokenizing changes the count.
    struct Letters;

    impl Vocabulary for Letters {
        fn vocab_size(&self) -> usize {
            3 + 26 + 1
        }
        fn excluded(&self) -> Vec<u32> {
            vec![0, 1, 2]
        }
        fn decode(&self, ids: &[u32]) -> Result<String, WorkloadError> {
            Ok(ids
                .iter()
                .map(|&id| match id {
                    29 => "ab".to_string(),
                    3..=28 => char::from(b'a' + (id - 3) as u8).to_string(),
                    _ => "<s>".to_string(),
                })
                .collect())
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>, WorkloadError> {
            let merged = text.replace("ab", "\u{1}");
            Ok(merged
                .chars()
                .map(|c| {
                    if c == '\u{1}' {
                        29
                    } else {
                        u32::from(c) - 97 + 3
                    }
                })
                .collect())
        }
    }

    fn spec(input_len: u32, output_len: u32, range_ratio: f64) -> RandomSpec {
        RandomSpec {
            input_len,
            output_len,
            range_ratio,
            seed: 7,
            count: 200,
        }
    }

    #[test]
    fn exact_lengths_without_range() {
        let items = items(&Letters, &spec(50, 16, 0.0)).expect("items");
        assert_eq!(items.len(), 200);
        for item in &items {
            let Prompt::Ids(ids) = &item.prompt else {
                panic!("ids")
            };
            assert_eq!(ids.len(), 50);
            assert!(ids.iter().all(|id| (3..30).contains(id)), "{ids:?}");
            assert_eq!(item.max_tokens, Some(16));
        }
        // Distinct prompts.
        assert_ne!(items[0].prompt, items[1].prompt);
    }

    #[test]
    fn lengths_spread_over_the_range_and_repeat_with_the_seed() {
        let a = items(&Letters, &spec(100, 40, 0.5)).expect("items");
        let lens: Vec<usize> = a
            .iter()
            .map(|i| match &i.prompt {
                Prompt::Ids(ids) => ids.len(),
                _ => 0,
            })
            .collect();
        assert!(lens.iter().all(|l| (50..=150).contains(l)));
        assert!(*lens.iter().min().unwrap_or(&0) < 60 && *lens.iter().max().unwrap_or(&0) > 140);
        let outs: Vec<u32> = a.iter().filter_map(|i| i.max_tokens).collect();
        assert!(outs.iter().all(|o| (20..=60).contains(o)));
        let mean = outs.iter().map(|&o| f64::from(o)).sum::<f64>() / outs.len() as f64;
        assert!((mean - 40.0).abs() < 3.0, "{mean}");
        assert_eq!(a, items(&Letters, &spec(100, 40, 0.5)).expect("again"));
    }

    #[test]
    fn draw_len_bounds() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!((1..=2).contains(&draw_len(&mut rng, 1, 0.9)));
            assert_eq!(draw_len(&mut rng, 7, 0.0), 7);
            assert!((5..=15).contains(&draw_len(&mut rng, 10, 0.5)));
        }
        assert!(items(&Letters, &spec(10, 10, 1.0)).is_err());
    }
}
