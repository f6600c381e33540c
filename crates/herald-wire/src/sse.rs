//! An SSE body (the WHATWG event stream format) split into lines, and each
//! line into what it is: the end of a block, a comment, or a field.
//!
//! Lines end in LF or CRLF. A lone CR also ends a line in the format, but
//! no writer this crate serves sends one (the hub's encoder turns every
//! line break of a payload into separate `data:` lines), and telling a
//! lone CR from the first half of a CRLF split between two reads would
//! need one byte of look-ahead the callers do not keep; the hub's encoder
//! is checked against a complete parser instead.

/// One line of an SSE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// An empty line: the end of a block (an event, when it had data).
    Blank,
    /// `: text`, the text without the colon and one leading space.
    Comment(&'a [u8]),
    /// `name: value` (or `name:value`, or a bare `name` with an empty
    /// value).
    Field {
        /// The field's name: `data`, `id`, `event`, `retry` or another.
        name: &'a [u8],
        /// Its value, without the one space that may follow the colon.
        value: &'a [u8],
    },
}

/// The first whole line of `body`, and how many bytes it took with its
/// line end; `None` until a line end has come.
pub fn next_line(body: &[u8]) -> Option<(Line<'_>, usize)> {
    let nl = body.iter().position(|&b| b == b'\n')?;
    let mut line = &body[..nl];
    if let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    Some((classify(line), nl + 1))
}

fn classify(line: &[u8]) -> Line<'_> {
    if line.is_empty() {
        return Line::Blank;
    }
    let (name, value) = match line.iter().position(|&b| b == b':') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    let value = value.strip_prefix(b" ").unwrap_or(value);
    if name.is_empty() {
        Line::Comment(value)
    } else {
        Line::Field { name, value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(mut body: &[u8]) -> (Vec<Line<'_>>, &[u8]) {
        let mut out = Vec::new();
        while let Some((line, took)) = next_line(body) {
            out.push(line);
            body = &body[took..];
        }
        (out, body)
    }

    #[test]
    fn every_kind_of_line() {
        let (seen, rest) =
            lines(b": ping\n\nid: 7\r\nevent:x\ndata:  two spaces\ndata\nretry: 10\n\ndata: par");
        assert_eq!(
            seen,
            [
                Line::Comment(b"ping"),
                Line::Blank,
                Line::Field {
                    name: b"id",
                    value: b"7"
                },
                Line::Field {
                    name: b"event",
                    value: b"x"
                },
                Line::Field {
                    name: b"data",
                    value: b" two spaces"
                },
                Line::Field {
                    name: b"data",
                    value: b""
                },
                Line::Field {
                    name: b"retry",
                    value: b"10"
                },
                Line::Blank,
            ]
        );
        assert_eq!(rest, b"data: par", "a line without its end waits");
    }

    #[test]
    fn a_value_keeps_its_colons() {
        assert_eq!(
            next_line(b"data: {\"a\":1}\n").unwrap().0,
            Line::Field {
                name: b"data",
                value: b"{\"a\":1}"
            }
        );
    }
}
