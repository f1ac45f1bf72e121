//! Correctness under load (`--check`): every successful request's output is
//! compared with the expected greedy output of its prompt. Token ids are
//! compared when both sides have them (weft's gRPC API), else the text,
//! character by character. A difference is classified as
//!
//! - `lost`: the output is the expected one with tokens missing,
//! - `duplicated`: the output is the expected one with tokens added (a
//!   token delivered twice, for example),
//! - `mismatch`: anything else (a wrong token at `position`).
//!
//! Independently of any expectation, a stream whose token events disagree
//! with the server's own usage count lost or duplicated tokens on the way.

use serde::Serialize;

use crate::runner::Phase;
use crate::target::Timeline;
use crate::workload::{Expected, Workload};

/// How an output compares with what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Verdict {
    Match,
    /// First differing position (in tokens or characters).
    Mismatch {
        position: usize,
    },
    /// `count` tokens missing, the first at `position`.
    Lost {
        position: usize,
        count: usize,
    },
    /// `count` extra tokens, the first at `position`.
    Duplicated {
        position: usize,
        count: usize,
    },
}

/// Compares `got` with `expected`.
pub fn compare<T: PartialEq>(expected: &[T], got: &[T]) -> Verdict {
    let position = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    if position == expected.len() && position == got.len() {
        return Verdict::Match;
    }
    if got.len() < expected.len() && is_subsequence(got, expected) {
        return Verdict::Lost {
            position,
            count: expected.len() - got.len(),
        };
    }
    if got.len() > expected.len() && is_subsequence(expected, got) {
        return Verdict::Duplicated {
            position,
            count: got.len() - expected.len(),
        };
    }
    Verdict::Mismatch { position }
}

/// Whether `short` is `long` with some elements left out.
fn is_subsequence<T: PartialEq>(short: &[T], long: &[T]) -> bool {
    let mut it = long.iter();
    short.iter().all(|s| it.any(|l| l == s))
}

/// Compares a request's output with its expectation: ids when both sides
/// have them, else text.
pub fn check(expected: &Expected, got: &Timeline) -> Option<Verdict> {
    if let (Some(want), Some(have)) = (&expected.ids, &got.token_ids) {
        return Some(compare(want, have));
    }
    let want: Vec<char> = expected.text.as_ref()?.chars().collect();
    let have: Vec<char> = got.text.chars().collect();
    Some(compare(&want, &have))
}

/// A stream whose token events (with ids) disagree with the server's usage
/// count lost or duplicated tokens in transit.
pub fn stream_consistency(got: &Timeline) -> Verdict {
    let Some(ids) = &got.token_ids else {
        return Verdict::Match;
    };
    let events = ids.len();
    let reported = usize::try_from(got.output_tokens).unwrap_or(usize::MAX);
    match events.cmp(&reported) {
        std::cmp::Ordering::Equal => Verdict::Match,
        std::cmp::Ordering::Less => Verdict::Lost {
            position: events,
            count: reported - events,
        },
        std::cmp::Ordering::Greater => Verdict::Duplicated {
            position: reported,
            count: events - reported,
        },
    }
}

/// One finding, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Request index.
    pub index: usize,
    /// `expected` (compared with the expected output) or `stream` (token
    /// events against the server's usage count).
    pub against: &'static str,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Lengths compared (tokens, or characters for text).
    pub expected_len: usize,
    pub got_len: usize,
}

/// The correctness section of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Correctness {
    /// Successful requests compared.
    pub checked: usize,
    pub matched: usize,
    /// Requests with a wrong token, with tokens lost, with tokens added.
    pub mismatched: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Tokens lost and added, over all requests.
    pub lost_tokens: usize,
    pub duplicated_tokens: usize,
    /// Every finding (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
}

/// Findings kept in the report.
pub const MAX_FINDINGS: usize = 100;

impl Correctness {
    /// Whether no difference was found.
    pub fn clean(&self) -> bool {
        self.mismatched + self.lost + self.duplicated == 0
    }

    fn add(&mut self, finding: Finding) {
        match finding.verdict {
            Verdict::Match => return,
            Verdict::Mismatch { .. } => self.mismatched += 1,
            Verdict::Lost { count, .. } => {
                self.lost += 1;
                self.lost_tokens += count;
            }
            Verdict::Duplicated { count, .. } => {
                self.duplicated += 1;
                self.duplicated_tokens += count;
            }
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        }
    }
}

/// Checks every successful request of `phase` against `workload`'s
/// expectations and against its own usage count.
pub fn check_phase(phase: &Phase, workload: &Workload) -> Correctness {
    let mut c = Correctness::default();
    for (index, t) in phase.timelines() {
        c.checked += 1;
        let expected = &workload.item(index).expected;
        let stream = stream_consistency(t);
        let verdict = check(expected, t).unwrap_or(Verdict::Match);
        if stream == Verdict::Match && verdict == Verdict::Match {
            c.matched += 1;
        }
        let lens = |e: &Expected| match (&e.ids, &t.token_ids) {
            (Some(want), Some(have)) => (want.len(), have.len()),
            _ => (
                e.text.as_ref().map_or(0, |s| s.chars().count()),
                t.text.chars().count(),
            ),
        };
        let (expected_len, got_len) = lens(expected);
        c.add(Finding {
            index,
            against: "expected",
            verdict,
            expected_len,
            got_len,
        });
        c.add(Finding {
            index,
            against: "stream",
            verdict: stream,
            expected_len: usize::try_from(t.output_tokens).unwrap_or(usize::MAX),
            got_len: t.token_ids.as_ref().map_or(0, Vec::len),
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_differences() {
        let e = [1, 2, 3, 4, 5];
        assert_eq!(compare(&e, &e), Verdict::Match);
        assert_eq!(
            compare(&e, &[1, 2, 9, 4, 5]),
            Verdict::Mismatch { position: 2 }
        );
        assert_eq!(
            compare(&e, &[1, 2, 4, 5]),
            Verdict::Lost {
                position: 2,
                count: 1
            }
        );
        assert_eq!(
            compare(&e, &[1, 2, 3]),
            Verdict::Lost {
                position: 3,
                count: 2
            }
        );
        assert_eq!(
            compare(&e, &[1, 2, 2, 3, 4, 5]),
            Verdict::Duplicated {
                position: 2,
                count: 1
            }
        );
        assert_eq!(
            compare(&e, &[1, 2, 3, 4, 5, 5]),
            Verdict::Duplicated {
                position: 5,
                count: 1
            }
        );
        // Shorter but not a subsequence: a mismatch.
        assert_eq!(compare(&e, &[1, 7]), Verdict::Mismatch { position: 1 });
        assert_eq!(compare::<u32>(&[], &[]), Verdict::Match);
    }

    fn timeline(ids: Option<Vec<u32>>, text: &str, reported: u64) -> Timeline {
        Timeline {
            token_ids: ids,
            text: text.into(),
            output_tokens: reported,
            ..Timeline::default()
        }
    }

    #[test]
    fn ids_win_over_text_and_text_is_compared_by_chars() {
        let both = Expected {
            ids: Some(vec![1, 2]),
            text: Some("zz".into()),
        };
        assert_eq!(
            check(&both, &timeline(Some(vec![1, 2]), "ab", 2)),
            Some(Verdict::Match)
        );
        let text = Expected {
            ids: None,
            text: Some("héllo".into()),
        };
        assert_eq!(
            check(&text, &timeline(None, "hélo", 4)),
            Some(Verdict::Lost {
                position: 3,
                count: 1
            })
        );
        assert_eq!(check(&Expected::default(), &timeline(None, "x", 1)), None);
    }

    #[test]
    fn stream_events_must_match_the_usage_count() {
        assert_eq!(
            stream_consistency(&timeline(Some(vec![1, 2]), "", 2)),
            Verdict::Match
        );
        assert_eq!(
            stream_consistency(&timeline(Some(vec![1]), "", 3)),
            Verdict::Lost {
                position: 1,
                count: 2
            }
        );
        assert_eq!(
            stream_consistency(&timeline(Some(vec![1, 1, 2]), "", 2)),
            Verdict::Duplicated {
                position: 2,
                count: 1
            }
        );
        assert_eq!(stream_consistency(&timeline(None, "ab", 9)), Verdict::Match);
    }
}
