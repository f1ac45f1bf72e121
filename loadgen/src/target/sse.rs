//! Incremental Server-Sent Events parser: feed it the body's byte chunks as
//! they arrive, get back whole events. Chunks may split lines (and UTF-8
//! characters) anywhere.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The `data:` lines of an event, joined with `\n`.
    Data(String),
    /// An `error:` line, which llama.cpp's server sends instead of `data:`
    /// when a streaming request fails.
    Error(String),
}

/// Parser state between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// Consumes a chunk and returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.on_line(&line, &mut events);
            } else {
                self.line.push(b);
            }
        }
        events
    }

    /// The body ended: returns an event left without its blank line.
    pub fn finish(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, &mut events);
        }
        events.extend(self.data.take().map(SseEvent::Data));
        events
    }

    fn on_line(&mut self, raw: &[u8], events: &mut Vec<SseEvent>) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            events.extend(self.data.take().map(SseEvent::Data));
            return;
        }
        let line = String::from_utf8_lossy(raw);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "error" => events.push(SseEvent::Error(value.to_string())),
            // Comments (empty field), `event:`, `id:`, `retry:`: not needed.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> SseEvent {
        SseEvent::Data(s.to_string())
    }

    #[test]
    fn parses_whole_events() {
        let mut p = SseParser::default();
        let ev = p.push(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(ev, vec![data("{\"a\":1}"), data("[DONE]")]);
        assert!(p.finish().is_empty());
    }

    #[test]
    fn events_split_across_chunks_byte_by_byte() {
        let body = "data: {\"text\":\"h\u{e9}llo\"}\r\n\r\n: keep-alive\n\ndata:[DONE]\n\n";
        let mut p = SseParser::default();
        let mut ev = Vec::new();
        for b in body.as_bytes() {
            ev.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(ev, vec![data("{\"text\":\"h\u{e9}llo\"}"), data("[DONE]")]);
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: a\ndata: b\n\n"), vec![data("a\nb")]);
    }

    #[test]
    fn error_lines_and_unterminated_events() {
        let mut p = SseParser::default();
        let ev = p.push(b"error: {\"message\":\"boom\"}\n\ndata: tail");
        assert_eq!(ev, vec![SseEvent::Error("{\"message\":\"boom\"}".into())]);
        assert_eq!(p.finish(), vec![data("tail")]);
    }

    #[test]
    fn other_fields_are_ignored() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: ping\nid: 3\nretry: 10\n\n").is_empty());
    }
}
