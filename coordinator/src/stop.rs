//! Stop strings over a stream of text deltas: passes text on as soon as it
//! cannot be the start of a stop string, holds back the rest, and ends the
//! stream at the first stop string to complete without ever letting any
//! part of it through.
//!
//! "First" is the stop string that completes earliest in the text (ties go
//! to the one that starts earliest, i.e. the longer). This is what a
//! stream can decide without looking past the stop: once a stop string
//! has completed, generation ends, so a longer stop string that started
//! earlier but would complete later never gets the chance. When no stop
//! string contains another, it is also the earliest-starting match.

/// A stop string and its KMP failure table (over bytes).
struct Stop {
    text: String,
    /// `fail[i]`: length of the longest proper prefix of `text[..=i]` that
    /// is also a suffix of it.
    fail: Vec<usize>,
}

impl Stop {
    fn new(text: String) -> Self {
        let p = text.as_bytes();
        let mut fail = vec![0; p.len()];
        let mut k = 0;
        for i in 1..p.len() {
            while k > 0 && p[i] != p[k] {
                k = fail[k - 1];
            }
            if p[i] == p[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Stop { text, fail }
    }

    /// Length of the longest suffix of `s` that is a proper prefix of this
    /// stop string, given that `s` does not contain the stop string.
    fn partial_suffix(&self, s: &[u8]) -> usize {
        let p = self.text.as_bytes();
        // a proper prefix is shorter than p, so the last p.len() - 1 bytes
        // of `s` hold any such suffix
        let window = &s[s.len().saturating_sub(p.len() - 1)..];
        let mut k = 0;
        for &b in window {
            while k > 0 && b != p[k] {
                k = self.fail[k - 1];
            }
            if b == p[k] {
                k += 1;
            }
            if k == p.len() {
                // cannot happen for text without the stop string; stay safe
                k = self.fail[k - 1];
            }
        }
        k
    }
}

/// What to do after one delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopEvent {
    /// Text safe to send now (may be empty).
    Text(String),
    /// A stop string completed: `text` is what precedes it and may still
    /// be sent; `stop` is which string. The stream is over.
    Stopped { text: String, stop: String },
}

/// Watches a stream of text deltas for stop strings.
pub struct StopMatcher {
    /// The non-empty stop strings.
    stops: Vec<Stop>,
    /// Text received but not yet released: the longest suffix of the text
    /// so far that is a proper prefix of some stop string.
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// An empty list (or one of empty strings only) passes text through.
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(Stop::new)
                .collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has completed (later deltas are ignored).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next delta; returns what may be sent now, or the stop.
    /// After a stop, every delta is ignored and yields empty text.
    pub fn push(&mut self, delta: &str) -> StopEvent {
        if self.stopped {
            return StopEvent::Text(String::new());
        }
        if self.stops.is_empty() {
            return StopEvent::Text(delta.to_owned());
        }
        self.pending.push_str(delta);
        if let Some((start, which)) = self.first_match() {
            self.pending.truncate(start);
            self.stopped = true;
            return StopEvent::Stopped {
                text: std::mem::take(&mut self.pending),
                stop: self.stops[which].text.clone(),
            };
        }
        let held = self
            .stops
            .iter()
            .map(|s| s.partial_suffix(self.pending.as_bytes()))
            .max()
            .unwrap_or(0);
        // A held suffix starts with a stop string's first byte, never a
        // UTF-8 continuation byte, so this is a char boundary already.
        let mut cut = self.pending.len() - held;
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = self.pending.split_off(cut);
        StopEvent::Text(std::mem::replace(&mut self.pending, rest))
    }

    /// At the end of generation without a stop: the held-back text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The match in `pending` that completes first, ties to the earliest
    /// start: (start byte, index of the stop string). `pending` held no
    /// match before this delta, so any match found here is new.
    fn first_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let start = self.pending.find(&s.text)?;
                Some((start + s.text.len(), start, i))
            })
            .min()
            .map(|(_, start, i)| (start, i))
    }
}

#[cfg(test)]
mod tests;
