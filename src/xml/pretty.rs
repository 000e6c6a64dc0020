//! Indentation for people reading a transcript, done on the text as it crossed the wire (no
//! tree is built): the transcript keeps the bytes, the view indents them. The output is
//! bounded by the input: indentation stops growing at [`MAX_INDENT`] levels and the result
//! is cut at `max` bytes.

/// Deeper levels are shown at this indentation.
pub const MAX_INDENT: usize = 12;

enum Token<'a> {
    Start(&'a str, bool),
    End(&'a str),
    Text(&'a str),
}

/// Split XML text into tags and character data; quote-aware inside tags.
fn tokens(s: &str) -> impl Iterator<Item = Token<'_>> {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= b.len() {
            return None;
        }
        let start = i;
        if b[i] != b'<' {
            let end = memchr::memchr(b'<', &b[i..]).map_or(b.len(), |j| i + j);
            i = end;
            return Some(Token::Text(&s[start..end]));
        }
        let mut quote = 0u8;
        let mut j = i + 1;
        while j < b.len() {
            let c = b[j];
            if quote != 0 {
                if c == quote {
                    quote = 0;
                }
            } else if c == b'\'' || c == b'"' {
                quote = c;
            } else if c == b'>' {
                break;
            }
            j += 1;
        }
        i = (j + 1).min(b.len());
        let tag = &s[start..i];
        Some(if tag.starts_with("</") {
            Token::End(tag)
        } else {
            Token::Start(tag, tag.ends_with("/>") || tag.starts_with("<?") || tag.starts_with("<stream:stream"))
        })
    })
}

/// Two-space indentation, text kept inline when an element holds only text; at most `max`
/// bytes of output (cut on a character boundary, marked).
pub fn indent(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 64);
    let mut depth = 0usize;
    // Whether the last token opened an element (so a close right after stays inline).
    let mut after_open = false;
    let mut after_text = false;
    for t in tokens(s) {
        if out.len() > max {
            break;
        }
        match t {
            Token::Start(tag, empty) => {
                newline(&mut out, depth);
                out.push_str(tag);
                if !empty {
                    depth += 1;
                }
                after_open = !empty;
                after_text = false;
            }
            Token::End(tag) => {
                depth = depth.saturating_sub(1);
                if !(after_open || after_text) {
                    newline(&mut out, depth);
                }
                out.push_str(tag);
                after_open = false;
                after_text = false;
            }
            Token::Text(text) => {
                let text = text.trim();
                if !text.is_empty() {
                    out.push_str(text);
                    after_text = after_open || after_text;
                }
            }
        }
    }
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(" …(cut)");
    }
    out
}

fn newline(out: &mut String, depth: usize) {
    if !out.is_empty() {
        out.push('\n');
        for _ in 0..depth.min(MAX_INDENT) {
            out.push_str("  ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indents_nested_and_keeps_text_inline() {
        let s = "<message to='a' x='1>2'><body>hi &lt;b&gt;</body><x xmlns='u'><y/></x></message>";
        assert_eq!(
            indent(s, 1 << 16),
            "<message to='a' x='1>2'>\n  <body>hi &lt;b&gt;</body>\n  <x xmlns='u'>\n    <y/>\n  </x>\n</message>"
        );
        assert_eq!(indent("<a/>", 100), "<a/>");
        assert_eq!(indent("<db:result from='a' to='b'>key</db:result>", 100), "<db:result from='a' to='b'>key</db:result>");
    }

    #[test]
    fn output_is_bounded() {
        let deep = "<a>".repeat(1000) + &"</a>".repeat(1000);
        let out = indent(&deep, 1 << 20);
        // Indentation stops growing: at most MAX_INDENT levels per line.
        assert!(out.len() <= deep.len() + 2000 * (2 * MAX_INDENT + 1));
        let cut = indent(&deep, 100);
        assert!(cut.len() <= 100 + " …(cut)".len() && cut.ends_with("…(cut)"));
    }
}
