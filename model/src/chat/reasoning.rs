//! Splitting a reasoning model's output (DeepSeek-R1 style
//! `<think>...</think>answer`) into reasoning and answer text, one-shot or
//! while it streams.
//!
//! Rules (both forms agree exactly):
//! - Not in reasoning at the start: a `<think>` at the very start of the
//!   output (after optional whitespace, which is dropped) opens reasoning.
//!   Otherwise the whole output is answer text, `<think>` included.
//! - In reasoning: everything up to the first `</think>` is reasoning; the
//!   whitespace right after `</think>` is dropped and the rest is answer
//!   text (later tags in the answer are plain text).
//! - The tags themselves are never emitted.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// True when a rendered prompt leaves a `<think>` block open for the model
/// to continue (e.g. DeepSeek-R1-Distill, whose generation prompt is
/// `<｜Assistant｜><think>\n`): the prompt, less trailing whitespace, ends
/// with `<think>`. Requiring the tag at the very end (rather than merely
/// after the last `</think>`) keeps a literal `<think>` in a user message
/// from switching a non-reasoning model's answer into reasoning.
pub fn prompt_opens_reasoning(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

/// Reasoning and answer text, of a whole output or of one streamed piece.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasoningDelta {
    pub reasoning: String,
    pub content: String,
}

impl ReasoningDelta {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }
}

/// Splits a complete output. `in_reasoning`: the prompt already opened a
/// `<think>` block (see [`prompt_opens_reasoning`]).
pub fn split_reasoning(text: &str, in_reasoning: bool) -> ReasoningDelta {
    let body = if in_reasoning {
        text
    } else {
        match text.trim_start().strip_prefix(OPEN) {
            Some(rest) => rest,
            None => {
                return ReasoningDelta {
                    reasoning: String::new(),
                    content: text.to_string(),
                }
            }
        }
    };
    match body.split_once(CLOSE) {
        Some((reasoning, content)) => ReasoningDelta {
            reasoning: reasoning.to_string(),
            content: content.trim_start().to_string(),
        },
        None => ReasoningDelta {
            reasoning: body.to_string(),
            content: String::new(),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace or a prefix of `<think>` seen yet.
    Start,
    /// Inside the `<think>` block.
    Reasoning,
    /// Just after `</think>`: dropping whitespace.
    AfterClose,
    /// Answer text until the end.
    Content,
}

/// Streaming form of [`split_reasoning`]: feed output pieces to
/// [`push`](Self::push) as they are generated (a piece may end in the middle
/// of a tag), then call [`finish`](Self::finish) once. Text that may be the
/// start of a tag is held back until it cannot be one.
#[derive(Clone, Debug)]
pub struct ReasoningParser {
    state: State,
    /// Text not emitted yet (at most a partial tag, or leading whitespace
    /// plus a partial `<think>` in the start state).
    held: String,
}

/// Length of the longest proper prefix of `tag` that `s` ends with.
fn partial_tag_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&k| s.ends_with(&tag[..k]))
        .unwrap_or(0)
}

impl ReasoningParser {
    /// `in_reasoning`: the prompt already opened a `<think>` block.
    pub fn new(in_reasoning: bool) -> Self {
        Self {
            state: if in_reasoning {
                State::Reasoning
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    /// Whether the parser is inside the reasoning block.
    pub fn in_reasoning(&self) -> bool {
        self.state == State::Reasoning
    }

    /// Consumes one piece of output; returns what can be emitted now.
    pub fn push(&mut self, text: &str) -> ReasoningDelta {
        let mut out = ReasoningDelta::default();
        self.held.push_str(text);
        self.advance(&mut out);
        out
    }

    /// Ends the stream, flushing text held back as a possible tag.
    pub fn finish(&mut self) -> ReasoningDelta {
        let mut out = ReasoningDelta::default();
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Start | State::Content => {
                out.content = held;
                self.state = State::Content;
            }
            State::Reasoning => out.reasoning = held,
            State::AfterClose => {}
        }
        out
    }

    fn advance(&mut self, out: &mut ReasoningDelta) {
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Reasoning;
                    } else if OPEN.starts_with(trimmed) {
                        return;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Reasoning => {
                    if let Some(i) = self.held.find(CLOSE) {
                        out.reasoning.push_str(&self.held[..i]);
                        self.held.drain(..i + CLOSE.len());
                        self.state = State::AfterClose;
                        continue;
                    }
                    let emit = self.held.len() - partial_tag_suffix(&self.held, CLOSE);
                    out.reasoning.push_str(&self.held[..emit]);
                    self.held.drain(..emit);
                    return;
                }
                State::AfterClose => {
                    let trimmed = self.held.trim_start();
                    if trimmed.is_empty() {
                        self.held.clear();
                        return;
                    }
                    self.held = trimmed.to_string();
                    self.state = State::Content;
                }
                State::Content => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const SAMPLES: &[&str] = &[
        "",
        " ",
        "Hello",
        "<think>",
        "</think>",
        "<think></think>",
        "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
        "  \n<think>reason</think>answer",
        "<thinking>not a tag</thinking>",
        "<thi",
        "  <th",
        "answer first <think>later</think> tail",
        "Okay, so 2+2.\n</think>\n\n4",
        "plain reasoning with no end",
        "trailing partial </thi",
        "<think>a < b and c </ d </think",
        "<think>思考 🤔 </think>  答案 <think> é",
        "<<think>x</think>y",
        "<think>x<</think></think>  \n\n",
        "x</think>\u{3000}\u{a0}y</think>z",
        "\u{2003}<think>\u{2003}r</think>\u{2003}",
    ];

    fn stream(pieces: &[&str], in_reasoning: bool) -> ReasoningDelta {
        let mut p = ReasoningParser::new(in_reasoning);
        let mut all = ReasoningDelta::default();
        for piece in pieces {
            let d = p.push(piece);
            all.reasoning.push_str(&d.reasoning);
            all.content.push_str(&d.content);
        }
        let d = p.finish();
        all.reasoning.push_str(&d.reasoning);
        all.content.push_str(&d.content);
        all
    }

    fn boundaries(s: &str) -> Vec<usize> {
        (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect()
    }

    #[test]
    fn one_shot_examples() {
        let d = split_reasoning("<think>\nhmm\n</think>\n\nFour.", false);
        assert_eq!(d.reasoning, "\nhmm\n");
        assert_eq!(d.content, "Four.");
        let d = split_reasoning("hmm\n</think>\n\nFour.", true);
        assert_eq!(
            (d.reasoning.as_str(), d.content.as_str()),
            ("hmm\n", "Four.")
        );
        let d = split_reasoning("Four. <think>x</think>", false);
        assert_eq!(
            (d.reasoning.as_str(), d.content.as_str()),
            ("", "Four. <think>x</think>")
        );
        let d = split_reasoning("still thinking", true);
        assert_eq!(
            (d.reasoning.as_str(), d.content.as_str()),
            ("still thinking", "")
        );
        let d = split_reasoning(" \n<think>r</think>a</think>b", false);
        assert_eq!(
            (d.reasoning.as_str(), d.content.as_str()),
            ("r", "a</think>b")
        );
    }

    #[test]
    fn split_tags_are_held_back() {
        let mut p = ReasoningParser::new(false);
        assert!(p.push("<th").is_empty());
        assert!(p.push("ink>").is_empty());
        assert!(p.in_reasoning());
        assert_eq!(p.push("Let me see <").reasoning, "Let me see ");
        assert_eq!(p.push("b> and </th").reasoning, "<b> and ");
        assert!(p.push("ink>\n").is_empty());
        assert!(!p.in_reasoning());
        assert!(p.push("\n").is_empty());
        assert_eq!(p.push("Answer <think>").content, "Answer <think>");
        assert!(p.finish().is_empty());
    }

    #[test]
    fn finish_flushes_partial_tags() {
        let mut p = ReasoningParser::new(true);
        assert_eq!(p.push("abc </thi").reasoning, "abc ");
        assert_eq!(p.finish().reasoning, "</thi");
        let mut p = ReasoningParser::new(false);
        assert!(p.push(" <thin").is_empty());
        assert_eq!(p.finish().content, " <thin");
    }

    #[test]
    fn every_two_and_three_way_split_matches_one_shot() {
        for &text in SAMPLES {
            for in_reasoning in [false, true] {
                let want = split_reasoning(text, in_reasoning);
                let cuts = boundaries(text);
                for &i in &cuts {
                    for &j in cuts.iter().filter(|&&j| j >= i) {
                        let pieces = [&text[..i], &text[i..j], &text[j..]];
                        assert_eq!(
                            stream(&pieces, in_reasoning),
                            want,
                            "{text:?} in_reasoning={in_reasoning} cuts {i},{j}"
                        );
                    }
                }
                let chars: Vec<String> = text.chars().map(String::from).collect();
                let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
                assert_eq!(stream(&chars, in_reasoning), want, "{text:?} char by char");
            }
        }
    }

    #[test]
    fn random_chunkings_match_one_shot() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x005e_ed2b);
        for &text in SAMPLES {
            let cuts = boundaries(text);
            for in_reasoning in [false, true] {
                let want = split_reasoning(text, in_reasoning);
                for _ in 0..200 {
                    let mut points: Vec<usize> = (0..rng.random_range(0..6))
                        .map(|_| cuts[rng.random_range(0..cuts.len())])
                        .collect();
                    points.push(0);
                    points.push(text.len());
                    points.sort_unstable();
                    let pieces: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
                    assert_eq!(stream(&pieces, in_reasoning), want, "{text:?} {points:?}");
                }
            }
        }
    }

    #[test]
    fn prompt_detection() {
        assert!(prompt_opens_reasoning("<｜Assistant｜><think>\n"));
        assert!(prompt_opens_reasoning("<|im_start|>assistant\n<think>"));
        assert!(!prompt_opens_reasoning("<|im_start|>assistant\n"));
        assert!(!prompt_opens_reasoning("<think>\n\n</think>\n\n"));
        assert!(!prompt_opens_reasoning(
            "user: what is <think>?\nassistant:"
        ));
        assert!(!prompt_opens_reasoning(""));
    }
}
