//! A reader and writer for the nats-server configuration syntax, just enough to merge a user's file into the
//! one we generate.
//!
//! Supported: `key: value`, `key = value`, `key value`, nested `{}` maps (with or without a separator),
//! `[]` arrays (comma or newline separated), `#` and `//` comments, single- and double-quoted strings,
//! unquoted strings, numbers with size suffixes (`50M`, `5G`), durations, `(...)` block strings,
//! `include "file"` (relative to the including file, spliced in place) and `$VAR` references.
//!
//! Scalars are kept as their raw source text (quotes, escapes and suffixes included) and written back
//! verbatim, so nothing is reinterpreted on the way through; nats-server does the interpretation.
//! Keys compare case-insensitively, as nats-server does; a repeated key replaces the earlier value.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A configuration value: a raw scalar token, an array or a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Raw source text of the token, e.g. `50M`, `"/tmp/x"`, `$TOKEN`, `true`.
    Scalar(String),
    Array(Vec<Value>),
    Map(Map),
}

impl Value {
    /// A double-quoted string scalar holding `s`.
    pub fn string(s: impl AsRef<str>) -> Value {
        Value::Scalar(quote(s.as_ref()))
    }

    /// An unquoted scalar (numbers, booleans, keywords), written as is.
    pub fn raw(s: impl Into<String>) -> Value {
        Value::Scalar(s.into())
    }
}

/// An ordered map with case-insensitive keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Map {
    entries: Vec<(String, Value)>,
}

impl Map {
    pub fn new() -> Map {
        Map::default()
    }

    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(key))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.position(key).map(|i| &mut self.entries[i].1)
    }

    /// Sets `key`, replacing an existing entry in place (keeping its position) or appending.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.position(&key) {
            Some(i) => self.entries[i] = (key, value),
            None => self.entries.push((key, value)),
        }
    }

    /// Builder form of [`Map::insert`].
    pub fn with(mut self, key: impl Into<String>, value: Value) -> Map {
        self.insert(key, value);
        self
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.position(key).map(|i| self.entries.remove(i).1)
    }

    /// The map as nats-server configuration text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        write_entries(&mut out, &self.entries, 0);
        out
    }
}

/// Where a file failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

/// `s` as a double-quoted nats string (backslash and quote escaped; control characters as `\n`, `\t`, `\r`).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text of a scalar without its quotes (escapes of double-quoted strings resolved); `None` for arrays and
/// maps. Variables (`$X`) are returned as written.
pub fn unquote(value: &Value) -> Option<String> {
    let Value::Scalar(raw) = value else {
        return None;
    };
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Some(inner.to_string());
    }
    let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return Some(raw.clone());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                if let Ok(b) = u8::from_str_radix(&hex, 16) {
                    out.push(b as char);
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Some(out)
}

/// Parses a configuration file, following its includes.
pub fn parse_file(path: &Path) -> Result<Map, SyntaxError> {
    parse_file_at_depth(path, 0)
}

/// Parses configuration text; `origin` names it in errors and anchors relative includes.
pub fn parse_str(text: &str, origin: &Path) -> Result<Map, SyntaxError> {
    Parser {
        text,
        pos: 0,
        file: origin.to_path_buf(),
        depth: 0,
    }
    .parse_top()
}

const MAX_INCLUDE_DEPTH: usize = 16;

fn parse_file_at_depth(path: &Path, depth: usize) -> Result<Map, SyntaxError> {
    let text = std::fs::read_to_string(path).map_err(|e| SyntaxError {
        file: path.to_path_buf(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    Parser {
        text: &text,
        pos: 0,
        file: path.to_path_buf(),
        depth,
    }
    .parse_top()
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    file: PathBuf,
    depth: usize,
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_newline(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.text.as_bytes().get(self.pos + offset).copied()
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        let line = self.text.as_bytes()[..self.pos.min(self.text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        SyntaxError {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }

    fn at_comment(&self) -> bool {
        self.peek() == Some(b'#') || (self.peek() == Some(b'/') && self.peek_at(1) == Some(b'/'))
    }

    /// Consumes a comment up to (not including) the end of its line.
    fn skip_comment(&mut self) {
        while let Some(b) = self.peek() {
            if is_newline(b) {
                break;
            }
            self.pos += 1;
        }
    }

    /// Skips whitespace, newlines, value terminators (`,` `;`) and comments between entries.
    fn skip_between_entries(&mut self) {
        loop {
            match self.peek() {
                Some(b) if b.is_ascii_whitespace() || b == b',' || b == b';' => self.pos += 1,
                Some(_) if self.at_comment() => self.skip_comment(),
                _ => return,
            }
        }
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
    }

    fn parse_top(mut self) -> Result<Map, SyntaxError> {
        let mut map = Map::new();
        self.parse_entries(&mut map, false)?;
        Ok(map)
    }

    /// Entries until EOF (top level) or the closing `}` (nested).
    fn parse_entries(&mut self, map: &mut Map, nested: bool) -> Result<(), SyntaxError> {
        loop {
            self.skip_between_entries();
            match self.peek() {
                None if nested => return Err(self.error("unexpected end of file: missing `}`")),
                None => return Ok(()),
                Some(b'}') if nested => {
                    self.pos += 1;
                    return Ok(());
                }
                // nats-server tolerates braces around the whole top level.
                Some(b'{') | Some(b'}') if !nested => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            let (key, quoted) = self.parse_key()?;
            if !quoted && key.eq_ignore_ascii_case("include") && self.peek().is_some_and(is_blank) {
                let included = self.parse_include()?;
                for (k, v) in included.entries {
                    map.insert(k, v);
                }
                continue;
            }
            // Separator: optional `=` or `:`, surrounded by whitespace.
            while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
                self.pos += 1;
            }
            if matches!(self.peek(), Some(b'=') | Some(b':')) {
                self.pos += 1;
                self.skip_blanks();
            }
            let value = self.parse_value(&key)?;
            map.insert(key, value);
        }
    }

    fn parse_key(&mut self) -> Result<(String, bool), SyntaxError> {
        if let Some(q @ (b'"' | b'\'')) = self.peek() {
            let start = self.pos + 1;
            let end = self.text[start..]
                .find(q as char)
                .map(|i| start + i)
                .ok_or_else(|| self.error("unterminated quoted key"))?;
            self.pos = end + 1;
            return Ok((self.text[start..end].to_string(), true));
        }
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_whitespace() || matches!(b, b'=' | b':' | b'{' | b'[') {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error(format!(
                "expected a key, found `{}`",
                self.peek().map_or('?', char::from)
            )));
        }
        Ok((self.text[start..self.pos].to_string(), false))
    }

    /// After `include`: the (quoted or bare) file name, then the parsed file.
    fn parse_include(&mut self) -> Result<Map, SyntaxError> {
        self.skip_blanks();
        let name = match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                let start = self.pos + 1;
                let end = self.text[start..]
                    .find(q as char)
                    .map(|i| start + i)
                    .ok_or_else(|| self.error("unterminated include file name"))?;
                self.pos = end + 1;
                &self.text[start..end]
            }
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| !b.is_ascii_whitespace() && b != b';' && b != b'}')
                {
                    self.pos += 1;
                }
                &self.text[start..self.pos]
            }
        };
        if name.is_empty() {
            return Err(self.error("`include` needs a file name"));
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(self.error(format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH} (a cycle?)"
            )));
        }
        let base = self.file.parent().unwrap_or(Path::new("."));
        let path = base.join(name);
        parse_file_at_depth(&path, self.depth + 1).map_err(|mut e| {
            if e.line == 0 {
                // The included file could not be read: point at the include line.
                let here = self.error(format!("include {}: {}", path.display(), e.message));
                e = here;
            }
            e
        })
    }

    fn parse_value(&mut self, key: &str) -> Result<Value, SyntaxError> {
        match self.peek() {
            None => Err(self.error(format!(
                "expected a value for `{key}`, found the end of the file"
            ))),
            Some(b) if is_newline(b) => {
                Err(self.error(format!("expected a value for `{key}`, found a new line")))
            }
            Some(b'[') => self.parse_array(key),
            Some(b'{') => {
                self.pos += 1;
                let mut map = Map::new();
                self.parse_entries(&mut map, true)?;
                Ok(Value::Map(map))
            }
            Some(b'"') => self.parse_quoted(b'"', true),
            Some(b'\'') => self.parse_quoted(b'\'', false),
            Some(b'(') => self.parse_block(),
            Some(_) => {
                let start = self.pos;
                while let Some(b) = self.peek() {
                    if b.is_ascii_whitespace() || matches!(b, b';' | b',' | b']' | b'}') {
                        break;
                    }
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(self.error(format!("expected a value for `{key}`")));
                }
                Ok(Value::Scalar(self.text[start..self.pos].to_string()))
            }
        }
    }

    fn parse_quoted(&mut self, quote: u8, escapes: bool) -> Result<Value, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                None => {
                    self.pos = start;
                    return Err(self.error("unterminated quoted string"));
                }
                Some(b'\\') if escapes => self.pos += 2,
                Some(b) if b == quote => {
                    self.pos += 1;
                    return Ok(Value::Scalar(self.text[start..self.pos].to_string()));
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// `( ... )` where the closing parenthesis stands alone at the start of a line.
    fn parse_block(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        let mut search = start + 1;
        loop {
            let Some(i) = self.text[search..].find("\n)") else {
                return Err(
                    self.error("unterminated block string: a `)` alone on a line must close it")
                );
            };
            let close = search + i + 1;
            match self.text.as_bytes().get(close + 1) {
                None | Some(b'\n') | Some(b'\r') => {
                    self.pos = close + 1;
                    return Ok(Value::Scalar(self.text[start..self.pos].to_string()));
                }
                Some(_) => search = close,
            }
        }
    }

    fn parse_array(&mut self, key: &str) -> Result<Value, SyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_between_entries();
            match self.peek() {
                None => {
                    return Err(self.error(format!(
                        "unexpected end of file in the array of `{key}`: missing `]`"
                    )));
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(_) => items.push(self.parse_value(key)?),
            }
        }
    }
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
    if plain {
        key.to_string()
    } else if !key.contains('"') {
        format!("\"{key}\"")
    } else {
        format!("'{key}'")
    }
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

fn write_entries(out: &mut String, entries: &[(String, Value)], indent: usize) {
    for (key, value) in entries {
        pad(out, indent);
        let _ = write!(out, "{}: ", key_text(key));
        write_value(out, value, indent);
        out.push('\n');
    }
}

fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Scalar(raw) => out.push_str(raw),
        Value::Map(map) => {
            out.push_str("{\n");
            write_entries(out, &map.entries, indent + 1);
            pad(out, indent);
            out.push('}');
        }
        Value::Array(items) => {
            out.push_str("[\n");
            for item in items {
                pad(out, indent + 1);
                write_value(out, item, indent + 1);
                out.push('\n');
            }
            pad(out, indent);
            out.push(']');
        }
    }
}

#[cfg(test)]
#[path = "conf_syntax_tests.rs"]
mod tests;
