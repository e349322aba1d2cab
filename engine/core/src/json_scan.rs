//! The structure of JSON text without parsing its values: how deep it nests, and where the
//! elements of a top-level array begin and end.
//!
//! Parsers recurse once per level of nesting, so a record nested a hundred thousand levels
//! deep overflows the stack (an abort, not an error) even where the nesting sits in a field
//! nobody reads. Every reader measures its text here first ([`measure`]), a flat walk that
//! keeps a depth counter and jumps over strings with `memchr`; only text within
//! [`MAX_DEPTH`] and [`MAX_RECORD_BYTES`] goes to the parser. A JSON array that is too deep,
//! too large or broken part way is then cut into its elements ([`elements`]), each parsed, or
//! rejected, on its own, so that one bad record costs only itself.
//!
//! Input: bytes. Output: a [`Shape`] or the element spans. State: none.

use std::ops::Range;

/// Deepest nesting a record may have (objects and arrays inside it, the record itself being
/// level 1); serde_json's default limit.
pub const MAX_DEPTH: usize = 128;

/// Largest record, in bytes (Kafka's default `message.max.bytes` is 1 MB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// What [`measure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Deepest nesting of objects and arrays (a top-level object is 1; an object inside a
    /// top-level array is 2).
    pub depth: usize,
    /// Longest object or array at level 2, in bytes: the largest record of a JSON array.
    pub longest_element: usize,
}

/// Calls `visit(position, byte, depth)` for every `{ [ } ] ,` outside strings, with the depth
/// after an opening bracket and before a closing one. Stops at an unterminated string.
fn walk(text: &[u8], mut visit: impl FnMut(usize, u8, usize)) {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                i += 1;
                loop {
                    let Some(rest) = text.get(i..) else { return };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        None => return,
                        Some(k) if rest[k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k;
                            break;
                        }
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                visit(i, b, depth);
            }
            b'}' | b']' => {
                visit(i, b, depth);
                depth = depth.saturating_sub(1);
            }
            b',' => visit(i, b, depth),
            _ => {}
        }
        i += 1;
    }
}

/// The nesting depth of `text` and the size of its largest level-2 object or array.
pub fn measure(text: &[u8]) -> Shape {
    let mut shape = Shape {
        depth: 0,
        longest_element: 0,
    };
    let mut start = 0;
    walk(text, |i, b, d| match b {
        b'{' | b'[' => {
            shape.depth = shape.depth.max(d);
            if d == 2 {
                start = i;
            }
        }
        b'}' | b']' if d == 2 => {
            shape.longest_element = shape.longest_element.max(i + 1 - start);
        }
        _ => {}
    });
    shape
}

/// One element of a top-level JSON array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Its bytes in the text, without surrounding white space.
    pub span: Range<usize>,
    /// Its own nesting depth (an object of flat fields is 1, a number 0).
    pub depth: usize,
}

/// The elements of the top-level array `text` (which must start, after white space, with
/// `[`), and whether the array was closed. An array that breaks off yields the elements
/// before the break and the broken rest as a last element.
pub fn elements(text: &[u8]) -> (Vec<Element>, bool) {
    let mut out = Vec::new();
    let mut closed = false;
    let mut start = None::<usize>;
    let mut depth = 0;
    let push = |span: Range<usize>, depth: usize, out: &mut Vec<Element>| {
        let span = trim(text, span);
        if !span.is_empty() {
            out.push(Element { span, depth });
        }
    };
    walk(text, |i, b, d| {
        if closed {
            return;
        }
        match (b, d) {
            (b'[', 1) if start.is_none() => start = Some(i + 1),
            (b',', 1) | (b']', 1) => {
                if let Some(s) = start {
                    push(s..i, depth, &mut out);
                }
                depth = 0;
                start = Some(i + 1);
                closed = b == b']';
            }
            (b'{' | b'[', d) if d >= 2 => depth = depth.max(d - 1),
            _ => {}
        }
    });
    if !closed && let Some(s) = start {
        push(s..text.len(), depth, &mut out);
    }
    (out, closed)
}

fn trim(text: &[u8], span: Range<usize>) -> Range<usize> {
    let bytes = &text[span.clone()];
    let lead = bytes.len() - bytes.trim_ascii_start().len();
    let tail = bytes.len() - bytes.trim_ascii_end().len();
    if lead == bytes.len() {
        return span.start..span.start;
    }
    span.start + lead..span.end - tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> (Vec<(String, usize)>, bool) {
        let (els, closed) = elements(text.as_bytes());
        let v = els
            .into_iter()
            .map(|e| (text[e.span].to_string(), e.depth))
            .collect();
        (v, closed)
    }

    #[test]
    fn measures_depth_and_the_largest_record() {
        let s = measure(br#"[{"a": {"b": [1, 2]}}, {"c": "x{[[[[" }]"#);
        assert_eq!(s.depth, 4);
        assert_eq!(s.longest_element, r#"{"a": {"b": [1, 2]}}"#.len());
        assert_eq!(measure(br#"{"a": "\"{{{"}"#).depth, 1);
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(measure(deep.as_bytes()).depth, 100_000);
    }

    #[test]
    fn splits_an_array_into_its_elements() {
        let (els, closed) = texts(r#" [ {"a": [1,{"b":2}]} , 3, "s,]" ,{} ] trailing"#);
        assert!(closed);
        assert_eq!(
            els,
            [
                (r#"{"a": [1,{"b":2}]}"#.to_string(), 3),
                ("3".to_string(), 0),
                (r#""s,]""#.to_string(), 0),
                ("{}".to_string(), 1),
            ]
        );
        assert_eq!(texts("[]"), (vec![], true));
    }

    #[test]
    fn a_broken_array_keeps_what_came_before_the_break() {
        let (els, closed) = texts(r#"[{"a":1}, {"b": 1e400}, {"c": "\ud800"}, {"d": [1, 2"#);
        assert!(!closed);
        assert_eq!(els.len(), 4);
        assert_eq!(els[3].0, r#"{"d": [1, 2"#);
        // An unterminated string ends the walk, never panics.
        let (els, closed) = texts(r#"[{"a": "never closed \"#);
        assert!(!closed);
        assert_eq!(els.len(), 1);
    }
}
