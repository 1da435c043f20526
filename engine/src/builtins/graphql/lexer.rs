//! GraphQL tokens, read as gqlparser's lexer reads them: the same token kinds, positions
//! (lines, and columns counted in characters) and error messages, because OPA shows both.

use super::GqlError;
use super::ast::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    Eof,
    Bang,
    Dollar,
    Amp,
    ParenL,
    ParenR,
    Spread,
    Colon,
    Equals,
    At,
    BracketL,
    BracketR,
    BraceL,
    BraceR,
    Pipe,
    Name,
    Int,
    Float,
    String,
    BlockString,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Invalid => "<Invalid>",
            Kind::Eof => "<EOF>",
            Kind::Bang => "!",
            Kind::Dollar => "$",
            Kind::Amp => "&",
            Kind::ParenL => "(",
            Kind::ParenR => ")",
            Kind::Spread => "...",
            Kind::Colon => ":",
            Kind::Equals => "=",
            Kind::At => "@",
            Kind::BracketL => "[",
            Kind::BracketR => "]",
            Kind::BraceL => "{",
            Kind::BraceR => "}",
            Kind::Pipe => "|",
            Kind::Name => "Name",
            Kind::Int => "Int",
            Kind::Float => "Float",
            Kind::String => "String",
            Kind::BlockString => "BlockString",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub kind: Kind,
    pub value: String,
    pub pos: Pos,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{} {}", self.kind, super::ast::go_quote(&self.value))
        }
    }
}

pub struct Lexer<'a> {
    input: &'a [u8],
    text: &'a str,
    prelude: bool,
    start: usize,
    start_runes: usize,
    end: usize,
    end_runes: usize,
    line: usize,
    line_start_runes: usize,
}

type Lexed = (Token, Option<GqlError>);

impl<'a> Lexer<'a> {
    pub fn new(text: &'a str, prelude: bool) -> Lexer<'a> {
        Lexer {
            input: text.as_bytes(),
            text,
            prelude,
            start: 0,
            start_runes: 0,
            end: 0,
            end_runes: 0,
            line: 1,
            line_start_runes: 0,
        }
    }

    fn pos(&self, column: i64) -> Pos {
        Pos {
            line: self.line,
            column,
            prelude: self.prelude,
        }
    }

    fn value_token(&self, kind: Kind, value: String) -> Lexed {
        let column = self.start_runes as i64 - self.line_start_runes as i64 + 1;
        (
            Token {
                kind,
                value,
                pos: self.pos(column),
            },
            None,
        )
    }

    fn token(&self, kind: Kind) -> Lexed {
        self.value_token(kind, self.text[self.start..self.end].to_string())
    }

    fn error(&self, message: String) -> Lexed {
        let column = self.end_runes as i64 - self.line_start_runes as i64 + 1;
        let pos = self.pos(column);
        (
            Token {
                kind: Kind::Invalid,
                value: String::new(),
                pos,
            },
            Some(GqlError::at(Some(pos), message)),
        )
    }

    fn peek_char(&self) -> Option<char> {
        self.text[self.end..].chars().next()
    }

    /// The next token that is not a comment (gqlparser keeps comments only to attach them to
    /// nodes, and OPA's ASTs drop them).
    pub fn read(&mut self) -> Lexed {
        self.ws();
        self.start = self.end;
        self.start_runes = self.end_runes;
        while self.input.get(self.end) == Some(&b'#') {
            self.read_comment();
            self.ws();
            self.start = self.end;
            self.start_runes = self.end_runes;
        }
        if self.end >= self.input.len() {
            return self.token(Kind::Eof);
        }
        let r = self.input[self.start];
        self.end += 1;
        self.end_runes += 1;
        let simple = match r {
            b'!' => Some(Kind::Bang),
            b'$' => Some(Kind::Dollar),
            b'&' => Some(Kind::Amp),
            b'(' => Some(Kind::ParenL),
            b')' => Some(Kind::ParenR),
            b':' => Some(Kind::Colon),
            b'=' => Some(Kind::Equals),
            b'@' => Some(Kind::At),
            b'[' => Some(Kind::BracketL),
            b']' => Some(Kind::BracketR),
            b'{' => Some(Kind::BraceL),
            b'}' => Some(Kind::BraceR),
            b'|' => Some(Kind::Pipe),
            _ => None,
        };
        if let Some(kind) = simple {
            return self.value_token(kind, String::new());
        }
        match r {
            b'.' if self.input[self.start..].starts_with(b"...") => {
                self.end += 2;
                self.end_runes += 2;
                return self.value_token(Kind::Spread, String::new());
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => return self.read_name(),
            b'-' | b'0'..=b'9' => return self.read_number(),
            b'"' => {
                if self.input[self.start..].starts_with(b"\"\"\"") {
                    return self.read_block_string();
                }
                return self.read_string();
            }
            _ => {}
        }
        self.end -= 1;
        self.end_runes -= 1;
        if r < 0x20 && r != b'\t' && r != b'\n' && r != b'\r' {
            return self.error(format!(
                "Cannot contain the invalid character \"\\u{:04}\"",
                r
            ));
        }
        if r == b'\'' {
            return self.error(
                "Unexpected single quote character ('), did you mean to use a double quote (\")?"
                    .to_string(),
            );
        }
        let ch = if r < 0x80 {
            (r as char).to_string()
        } else {
            // Go's string(byte) of a byte >= 0x80 is that code point's UTF-8.
            char::from(r).to_string()
        };
        self.error(format!("Cannot parse the unexpected character \"{ch}\"."))
    }

    fn ws(&mut self) {
        while self.end < self.input.len() {
            match self.input[self.end] {
                b'\t' | b' ' | b',' => {
                    self.end += 1;
                    self.end_runes += 1;
                }
                b'\n' => {
                    self.end += 1;
                    self.end_runes += 1;
                    self.line += 1;
                    self.line_start_runes = self.end_runes;
                }
                b'\r' => {
                    self.end += 1;
                    self.end_runes += 1;
                    self.line += 1;
                    self.line_start_runes = self.end_runes;
                    if self.end < self.input.len() && self.input[self.end] == b'\n' {
                        self.end += 1;
                        self.end_runes += 1;
                    }
                }
                0xef if self.input[self.end..].starts_with(&[0xef, 0xbb, 0xbf]) => {
                    self.end += 3;
                    self.end_runes += 1;
                }
                _ => return,
            }
        }
    }

    fn read_comment(&mut self) {
        while let Some(c) = self.peek_char() {
            if c as u32 > 0x1f || c == '\t' {
                self.end += c.len_utf8();
                self.end_runes += 1;
            } else {
                break;
            }
        }
    }

    fn accept(&mut self, bytes: &[u8]) -> bool {
        if self.end < self.input.len() && bytes.contains(&self.input[self.end]) {
            self.end += 1;
            self.end_runes += 1;
            return true;
        }
        false
    }

    fn accept_digits(&mut self) -> usize {
        let mut n = 0;
        while self.end < self.input.len() && self.input[self.end].is_ascii_digit() {
            self.end += 1;
            self.end_runes += 1;
            n += 1;
        }
        n
    }

    fn describe_next(&self) -> String {
        match self.input.get(self.end) {
            Some(&b) if b < 0x80 => format!("\"{}\"", b as char),
            Some(&b) => format!("\"{}\"", char::from(b)),
            None => "<EOF>".to_string(),
        }
    }

    fn read_number(&mut self) -> Lexed {
        let mut float = false;
        self.end -= 1;
        self.end_runes -= 1;
        self.accept(b"-");
        if self.accept(b"0") {
            let consumed = self.accept_digits();
            if consumed != 0 {
                self.end -= consumed;
                self.end_runes -= consumed;
                return self.error(format!(
                    "Invalid number, unexpected digit after 0: {}.",
                    self.describe_next()
                ));
            }
        } else if self.accept_digits() == 0 {
            return self.error(format!(
                "Invalid number, expected digit but got: {}.",
                self.describe_next()
            ));
        }
        if self.accept(b".") {
            float = true;
            if self.accept_digits() == 0 {
                return self.error(format!(
                    "Invalid number, expected digit but got: {}.",
                    self.describe_next()
                ));
            }
        }
        if self.accept(b"eE") {
            float = true;
            self.accept(b"-+");
            if self.accept_digits() == 0 {
                return self.error(format!(
                    "Invalid number, expected digit but got: {}.",
                    self.describe_next()
                ));
            }
        }
        self.token(if float { Kind::Float } else { Kind::Int })
    }

    fn read_string(&mut self) -> Lexed {
        let len = self.input.len();
        let mut buf: Option<String> = None;
        self.start += 1;
        self.start_runes += 1;
        while self.end < len {
            let r = self.input[self.end];
            if r == b'\n' || r == b'\r' {
                break;
            }
            if r < 0x20 && r != b'\t' {
                return self.error(format!("Invalid character within String: \"\\u{:04}\".", r));
            }
            match r {
                b'"' => {
                    let (mut t, e) = self.token(Kind::String);
                    if let Some(b) = buf {
                        t.value = b;
                    }
                    self.end += 1;
                    self.end_runes += 1;
                    return (t, e);
                }
                b'\\' => {
                    if self.end + 1 >= len {
                        self.end += 1;
                        self.end_runes += 1;
                        return self.error("Invalid character escape sequence.".to_string());
                    }
                    let b = buf.get_or_insert_with(|| self.text[self.start..self.end].to_string());
                    let escape = self.input[self.end + 1];
                    if escape == b'u' {
                        if self.end + 6 >= len {
                            self.end += 1;
                            self.end_runes += 1;
                            let rest =
                                String::from_utf8_lossy(&self.input[self.end..]).into_owned();
                            return self
                                .error(format!("Invalid character escape sequence: \\{rest}."));
                        }
                        match unhex(&self.input[self.end + 2..self.end + 6]) {
                            Some(c) => {
                                b.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                                self.end += 6;
                                self.end_runes += 6;
                            }
                            None => {
                                self.end += 1;
                                self.end_runes += 1;
                                let seq =
                                    String::from_utf8_lossy(&self.input[self.end..self.end + 5])
                                        .into_owned();
                                return self
                                    .error(format!("Invalid character escape sequence: \\{seq}."));
                            }
                        }
                    } else {
                        let c = match escape {
                            b'"' | b'/' | b'\\' => escape as char,
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            _ => {
                                self.end += 1;
                                self.end_runes += 1;
                                let e = if escape < 0x80 {
                                    (escape as char).to_string()
                                } else {
                                    char::from(escape).to_string()
                                };
                                return self
                                    .error(format!("Invalid character escape sequence: \\{e}."));
                            }
                        };
                        b.push(c);
                        self.end += 2;
                        self.end_runes += 2;
                    }
                }
                _ => {
                    let c = self.peek_char().unwrap_or('\u{fffd}');
                    let w = if r >= 127 { c.len_utf8() } else { 1 };
                    self.end += w;
                    self.end_runes += 1;
                    if let Some(b) = buf.as_mut() {
                        b.push(c);
                    }
                }
            }
        }
        self.error("Unterminated string.".to_string())
    }

    fn read_block_string(&mut self) -> Lexed {
        let len = self.input.len();
        let mut buf = String::new();
        self.start += 3;
        self.start_runes += 3;
        self.end += 2;
        self.end_runes += 2;
        while self.end < len {
            let r = self.input[self.end];
            if r == b'"' {
                let mut quotes = 1;
                while self.end + quotes < len && self.input[self.end + quotes] == b'"' {
                    quotes += 1;
                }
                if quotes >= 3 {
                    for _ in 0..quotes - 3 {
                        buf.push('"');
                    }
                    let t = self.value_token(Kind::BlockString, block_string_value(&buf));
                    self.end += quotes;
                    self.end_runes += quotes;
                    return t;
                }
            }
            if r < 0x20 && r != b'\t' && r != b'\n' && r != b'\r' {
                return self.error(format!("Invalid character within String: \"\\u{:04}\".", r));
            }
            if r == b'\\' && self.input[self.end..].starts_with(b"\\\"\"\"") {
                buf.push_str("\"\"\"");
                self.end += 4;
                self.end_runes += 4;
            } else if r == b'\r' {
                if self.end + 1 < len && self.input[self.end + 1] == b'\n' {
                    self.end += 1;
                    self.end_runes += 1;
                }
                buf.push('\n');
                self.end += 1;
                self.end_runes += 1;
                self.line += 1;
                self.line_start_runes = self.end_runes;
            } else {
                let c = self.peek_char().unwrap_or('\u{fffd}');
                let w = if r >= 127 { c.len_utf8() } else { 1 };
                self.end += w;
                self.end_runes += 1;
                buf.push(c);
                if r == b'\n' {
                    self.line += 1;
                    self.line_start_runes = self.end_runes;
                }
            }
        }
        self.error("Unterminated string.".to_string())
    }

    fn read_name(&mut self) -> Lexed {
        while let Some(c) = self.peek_char() {
            if c.is_ascii_alphanumeric() || c == '_' {
                self.end += 1;
                self.end_runes += 1;
            } else {
                break;
            }
        }
        self.token(Kind::Name)
    }
}

fn unhex(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        v <<= 4;
        v |= match c {
            b'0'..=b'9' => (c - b'0') as u32,
            b'a'..=b'f' => (c - b'a' + 10) as u32,
            b'A'..=b'F' => (c - b'A' + 10) as u32,
            _ => return None,
        };
    }
    Some(v)
}

/// A block string's value: common indentation removed, blank first and last lines dropped.
fn block_string_value(raw: &str) -> String {
    let mut lines: Vec<String> = raw.split('\n').map(str::to_string).collect();
    let mut common: Option<usize> = None;
    for line in &lines {
        let indent = leading_whitespace(line);
        if let Some(i) = indent
            && i < line.len()
            && common.is_none_or(|c| i < c)
        {
            common = Some(i);
            if i == 0 {
                break;
            }
        }
    }
    if let Some(c) = common {
        for line in lines.iter_mut().skip(1) {
            // gqlparser cuts bytes; a cut inside a character keeps what remains, lossily.
            *line = if line.len() < c {
                String::new()
            } else {
                String::from_utf8_lossy(&line.as_bytes()[c..]).into_owned()
            };
        }
    }
    let mut start = 0;
    let mut end = lines.len();
    while start < end && leading_whitespace(&lines[start]).is_none() {
        start += 1;
    }
    while start < end && leading_whitespace(&lines[end - 1]).is_none() {
        end -= 1;
    }
    lines[start..end].join("\n")
}

/// Bytes of leading spaces and tabs; `None` when the line is only those.
fn leading_whitespace(s: &str) -> Option<usize> {
    s.char_indices()
        .find(|&(_, c)| c != ' ' && c != '\t')
        .map(|(i, _)| i)
}
