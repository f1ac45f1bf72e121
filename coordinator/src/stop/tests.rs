use super::*;

fn matcher(stops: &[&str]) -> StopMatcher {
    StopMatcher::new(stops.iter().map(|s| s.to_string()).collect())
}

fn text(s: &str) -> StopEvent {
    StopEvent::Text(s.to_owned())
}

fn stopped(text: &str, stop: &str) -> StopEvent {
    StopEvent::Stopped {
        text: text.to_owned(),
        stop: stop.to_owned(),
    }
}

/// Feeds `deltas`, returning every event and, if no stop came, what
/// `finish` released.
fn run(m: &mut StopMatcher, deltas: &[&str]) -> (Vec<StopEvent>, String) {
    let events: Vec<StopEvent> = deltas.iter().map(|d| m.push(d)).collect();
    (events, m.finish())
}

#[test]
fn no_stops_passes_text_through() {
    let mut m = matcher(&[]);
    assert_eq!(m.push("abc"), text("abc"));
    assert_eq!(m.push(""), text(""));
    assert_eq!(m.finish(), "");
    let mut m = matcher(&["", ""]); // empty stop strings are ignored
    assert_eq!(m.push("x"), text("x"));
}

#[test]
fn overlapping_prefix_is_released_only_when_it_cannot_start_the_stop() {
    let mut m = matcher(&["abcabd"]);
    let deltas: Vec<String> = "abcabcabdzz".chars().map(String::from).collect();
    let deltas: Vec<&str> = deltas.iter().map(String::as_str).collect();
    let (events, rest) = run(&mut m, &deltas);
    let want = [
        text(""),    // a
        text(""),    // ab
        text(""),    // abc
        text(""),    // abca
        text(""),    // abcab
        text("abc"), // abcabc: only "abc" can still start the stop
        text(""),    // abca
        text(""),    // abcab
        stopped("", "abcabd"),
        text(""), // ignored after the stop
        text(""),
    ];
    assert_eq!(events, want);
    assert_eq!(rest, "");
    assert!(m.is_stopped());
}

#[test]
fn stop_spanning_many_deltas() {
    let mut m = matcher(&["STOP_HERE"]);
    let (events, _) = run(&mut m, &["hello S", "TO", "P", "_", "HE", "RE world"]);
    assert_eq!(
        events,
        [
            text("hello "),
            text(""),
            text(""),
            text(""),
            text(""),
            stopped("", "STOP_HERE")
        ]
    );
    // a near miss is released as soon as it diverges
    let mut m = matcher(&["STOP_HERE"]);
    assert_eq!(m.push("a STOP_HER"), text("a "));
    assert_eq!(m.push("X"), text("STOP_HERX"));
}

#[test]
fn delta_with_several_candidate_starts() {
    let mut m = matcher(&["aab"]);
    assert_eq!(m.push("xaaaa"), text("xaa")); // "aa" may still start "aab"
    assert_eq!(m.push("ab tail"), stopped("a", "aab")); // "xaaaaab": stop at 4
    let mut m = matcher(&["aab"]);
    assert_eq!(m.push("aaaab!"), stopped("aa", "aab"));
}

#[test]
fn first_to_complete_wins_then_earliest_start() {
    // "bc" completes before "abcd" could
    let mut m = matcher(&["abcd", "bc"]);
    assert_eq!(m.push("xabcd"), stopped("xa", "bc"));
    // both complete at the same byte: the earlier (longer) one wins
    let mut m = matcher(&["cd", "bcd"]);
    assert_eq!(m.push("abcde"), stopped("a", "bcd"));
    // two stops in one delta: the earlier wins, whatever the list order
    let mut m = matcher(&["zz", "yy"]);
    assert_eq!(m.push("1yy2zz"), stopped("1", "yy"));
}

#[test]
fn finish_releases_held_text() {
    let mut m = matcher(&["xyz"]);
    assert_eq!(m.push("abx"), text("ab"));
    assert_eq!(m.push("y"), text(""));
    assert_eq!(m.finish(), "xy");
    assert_eq!(m.finish(), "");
}

#[test]
fn multi_byte_chars_are_never_split() {
    // the stop shares é's first byte (0xC3) with è: no false hold
    let mut m = matcher(&["é!"]);
    assert_eq!(m.push("caf"), text("caf"));
    assert_eq!(m.push("è"), text("è"));
    assert_eq!(m.push("é"), text(""));
    assert_eq!(m.push("é"), text("é"));
    assert_eq!(m.push("!"), stopped("", "é!"));
    let mut m = matcher(&["€€x"]);
    assert_eq!(m.push("a€€"), text("a"));
    assert_eq!(m.push("€"), text("€"));
    assert_eq!(m.finish(), "€€");
}

/// splitmix64: the test's own random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn string(&mut self, alphabet: &[char], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

/// Independent answer: the stop string occurrence that ends first (ties:
/// starts first), found with `str::find` on the whole text; returns the
/// text before it and the stop, or the whole text and `None`.
fn expected<'a>(full: &'a str, stops: &[String]) -> (&'a str, Option<String>) {
    let first = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            full.find(s.as_str())
                .map(|at| (at + s.len(), at, s.clone()))
        })
        .min();
    match first {
        Some((_, at, s)) => (&full[..at], Some(s)),
        None => (full, None),
    }
}

/// Longest suffix of `s` that is a proper prefix of some stop, naively.
fn naive_hold(s: &str, stops: &[String]) -> usize {
    (1..=s.len())
        .filter(|&k| s.is_char_boundary(s.len() - k))
        .filter(|&k| {
            let tail = &s[s.len() - k..];
            stops.iter().any(|st| st.len() > k && st.starts_with(tail))
        })
        .max()
        .unwrap_or(0)
}

/// Splits `full` at random char boundaries (empty pieces included).
fn random_deltas(rng: &mut Rng, full: &str) -> Vec<String> {
    let chars: Vec<char> = full.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() || out.is_empty() {
        let n = rng.below(5).min(chars.len() - i);
        out.push(chars[i..i + n].iter().collect());
        i += n;
    }
    out
}

/// Streams one case, checking every event against the independent answer.
fn check_case(full: &str, stops: &[String], deltas: &[String]) {
    let (want, want_stop) = expected(full, stops);
    let mut m = StopMatcher::new(stops.to_vec());
    let mut sent = String::new();
    let mut seen = String::new();
    let mut got_stop = None;
    for d in deltas {
        seen.push_str(d);
        match m.push(d) {
            StopEvent::Text(t) => {
                sent.push_str(&t);
                assert!(got_stop.is_none() || t.is_empty(), "text after the stop");
                if got_stop.is_none() {
                    // holds back exactly the longest partial stop suffix
                    assert_eq!(
                        seen.len() - sent.len(),
                        naive_hold(&seen, stops),
                        "{full:?} {stops:?} {deltas:?}"
                    );
                }
            }
            StopEvent::Stopped { text, stop } => {
                assert!(got_stop.is_none(), "stopped twice");
                sent.push_str(&text);
                got_stop = Some(stop);
            }
        }
        assert!(
            want.starts_with(&sent),
            "{full:?} {stops:?} {deltas:?}: leaked {sent:?}"
        );
    }
    sent.push_str(&m.finish());
    assert_eq!(sent, want, "{full:?} {stops:?} {deltas:?}");
    assert_eq!(got_stop, want_stop, "{full:?} {stops:?} {deltas:?}");
}

#[test]
fn random_texts_stops_and_splits_match_str_find() {
    let alphabet = ['a', 'b', 'c', 'é', '€'];
    let mut rng = Rng(0x5EED);
    let mut stopped_cases = 0;
    for _ in 0..30_000 {
        let nstops = rng.below(4);
        let stops: Vec<String> = (0..nstops)
            .map(|_| {
                let len = 1 + rng.below(4);
                let letters = 2 + rng.below(4);
                rng.string(&alphabet[..letters], len)
            })
            .collect();
        let len = rng.below(24);
        let full = rng.string(&alphabet, len);
        let deltas = random_deltas(&mut rng, &full);
        check_case(&full, &stops, &deltas);
        stopped_cases += usize::from(expected(&full, &stops).1.is_some());
    }
    // the generator must exercise both outcomes
    assert!(stopped_cases > 5_000, "{stopped_cases}");
}

#[test]
fn without_nested_stops_the_earliest_start_wins() {
    // When no stop contains another, "first to complete" is the same as
    // "first to start": check against the plain minimum of `str::find`.
    let alphabet = ['x', 'y', 'é'];
    let mut rng = Rng(42);
    for _ in 0..10_000 {
        let stops: Vec<String> = (0..3)
            .map(|_| {
                let len = 1 + rng.below(3);
                rng.string(&alphabet, len)
            })
            .collect();
        let nested = stops.iter().enumerate().any(|(i, a)| {
            stops
                .iter()
                .enumerate()
                .any(|(j, b)| i != j && a != b && a.contains(b.as_str()))
        });
        if nested {
            continue;
        }
        let len = rng.below(16);
        let full = rng.string(&alphabet, len);
        let cut = stops.iter().filter_map(|s| full.find(s.as_str())).min();
        let want = &full[..cut.unwrap_or(full.len())];
        let mut m = StopMatcher::new(stops.clone());
        let mut sent = String::new();
        for d in random_deltas(&mut rng, &full) {
            match m.push(&d) {
                StopEvent::Text(t) => sent.push_str(&t),
                StopEvent::Stopped { text, .. } => sent.push_str(&text),
            }
        }
        sent.push_str(&m.finish());
        assert_eq!(sent, want, "{full:?} {stops:?}");
    }
}
