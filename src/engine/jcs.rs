//! RFC 8785 JSON Canonicalization Scheme (JCS) and the hash `H(x)` that every receipt is built on.
//! `canonical` writes the one byte sequence a JSON value has under JCS: keys sorted by UTF-16 code
//! units, no whitespace, strings escaped as ECMAScript's `JSON.stringify` does, numbers in
//! ECMAScript `Number.prototype.toString` form. `admit` refuses the numbers (RFC 7493) that
//! would not survive that round trip through an IEEE 754 double, so a body that passes it hashes the
//! same in any conforming implementation.

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// A value that has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum JcsError {
    #[error("number {0} is not finite")]
    NonFiniteNumber(String),
}

/// A number that I-JSON (RFC 7493) does not allow, and where it sits in the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", located_message(.path, .message))]
pub struct IJsonError {
    /// Path to the number, like `input.items[2].amount`; empty for a top-level number.
    pub path: String,
    pub message: String,
}

/// The RFC 8785 canonical bytes of `value`.
pub fn canonical(value: &Value) -> Result<Vec<u8>, JcsError> {
    let mut out = Vec::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

/// Appends the RFC 8785 canonical bytes of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), JcsError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => out.extend_from_slice(ecmascript_number(number)?.as_bytes()),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // RFC 8785 §3.2.3 orders keys by their UTF-16 code units, which differs from the
            // UTF-8 byte order of serde_json's map once characters beyond U+FFFF appear.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|(left, _), (right, _)| utf16_order(left, right));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The canonical bytes of a JSON object written member by member, without building it: for the
/// objects fedcore hashes millions of times (`receipts`). Names must come in canonical order,
/// which for these ASCII names is byte order; a debug build checks it.
pub struct Members<'o> {
    out: &'o mut Vec<u8>,
    previous: Option<&'static str>,
}

impl<'o> Members<'o> {
    pub fn new(out: &'o mut Vec<u8>) -> Members<'o> {
        out.push(b'{');
        Members {
            out,
            previous: None,
        }
    }

    fn name(&mut self, name: &'static str) -> &mut Vec<u8> {
        debug_assert!(
            name.is_ascii() && self.previous.is_none_or(|p| p < name),
            "member {name} out of canonical order"
        );
        if self.previous.is_some() {
            self.out.push(b',');
        }
        self.previous = Some(name);
        write_string(name, self.out);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, name: &'static str, value: &str) -> &mut Self {
        let out = self.name(name);
        write_string(value, out);
        self
    }

    /// A string, or `null` for `None`.
    pub fn opt_str(&mut self, name: &'static str, value: Option<&str>) -> &mut Self {
        let out = self.name(name);
        match value {
            Some(value) => write_string(value, out),
            None => out.extend_from_slice(b"null"),
        }
        self
    }

    pub fn int(&mut self, name: &'static str, value: i64) -> &mut Self {
        let out = self.name(name);
        write_i64(value, out);
        self
    }

    /// A value written as its `Display` text, as serde writes what it collects as a string.
    pub fn text(&mut self, name: &'static str, value: impl std::fmt::Display) -> &mut Self {
        let out = self.name(name);
        let mut text = ShortText::default();
        let _ = write!(text, "{value}");
        write_string(text.as_str(), out);
        self
    }

    /// `Display` text, or `null` for `None`.
    pub fn opt_text(
        &mut self,
        name: &'static str,
        value: Option<impl std::fmt::Display>,
    ) -> &mut Self {
        match value {
            Some(value) => self.text(name, value),
            None => {
                self.name(name).extend_from_slice(b"null");
                self
            }
        }
    }

    /// An array of strings.
    pub fn strs<S: AsRef<str>>(&mut self, name: &'static str, values: &[S]) -> &mut Self {
        let out = self.name(name);
        out.push(b'[');
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_string(value.as_ref(), out);
        }
        out.push(b']');
        self
    }

    pub fn finish(&mut self) {
        self.out.push(b'}');
    }
}

/// Text formatted on the stack while it is short (timestamps, ids), on the heap beyond.
#[derive(Default)]
struct ShortText {
    bytes: [u8; 32],
    len: usize,
    long: Option<String>,
}

impl ShortText {
    fn as_str(&self) -> &str {
        match &self.long {
            Some(long) => long,
            // Only whole `str`s are ever copied in, so the bytes are UTF-8.
            None => std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default(),
        }
    }
}

impl std::fmt::Write for ShortText {
    fn write_str(&mut self, piece: &str) -> std::fmt::Result {
        if let Some(long) = &mut self.long {
            long.push_str(piece);
        } else if self.len + piece.len() <= self.bytes.len() {
            self.bytes[self.len..self.len + piece.len()].copy_from_slice(piece.as_bytes());
            self.len += piece.len();
        } else {
            let mut long = self.as_str().to_string();
            long.push_str(piece);
            self.long = Some(long);
        }
        Ok(())
    }
}

/// An integer as `write_canonical` writes `json!(value)`: its digits while the double it becomes
/// holds it exactly, the ECMAScript form of that double beyond.
pub fn write_i64(value: i64, out: &mut Vec<u8>) {
    const EXACT: u64 = 1 << 53;
    if value.unsigned_abs() > EXACT {
        if let Ok(text) = ecmascript_number(&Number::from(value)) {
            out.extend_from_slice(text.as_bytes());
        }
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Orders strings by their UTF-16 code units. For ASCII that is the byte order, which is cheap;
/// object keys are nearly always ASCII.
fn utf16_order(left: &str, right: &str) -> std::cmp::Ordering {
    if left.is_ascii() && right.is_ascii() {
        left.as_bytes().cmp(right.as_bytes())
    } else {
        left.encode_utf16().cmp(right.encode_utf16())
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn hash_bytes(bytes: &[u8]) -> String {
    hex::encode(digest(bytes))
}

/// The SHA-256 of `bytes`, as bytes.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `hash` is `digest` written as 64 lowercase hex characters, as `hash_bytes` writes it:
/// the comparison `hash_bytes(x) == hash` without building the string.
pub fn is_hex_of(hash: &str, digest: &[u8; 32]) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = hash.as_bytes();
    hash.len() == 64
        && digest
            .iter()
            .zip(hash.chunks_exact(2))
            .all(|(&byte, pair)| {
                pair[0] == HEX[usize::from(byte >> 4)] && pair[1] == HEX[usize::from(byte & 0xf)]
            })
}

/// Whether `bytes` are exactly the canonical form of the JSON value they spell, that is
/// `canonical(parse(bytes)) == bytes`, decided in one pass over the bytes without building the
/// value. Sound, not complete: `true` proves it; `false` means only that it was not shown here
/// (anything not canonical, but also nesting deeper than `MAX_CHECKED_DEPTH`), and a caller that
/// must know then parses and canonicalizes. `verify` checks every evidence blob this way.
pub fn is_canonical(bytes: &[u8]) -> bool {
    let mut scan = Scan { bytes, at: 0 };
    scan.value(0) && scan.at == bytes.len()
}

/// How deeply `is_canonical` follows arrays and objects (the parser `verify` falls back to
/// follows 128 levels).
const MAX_CHECKED_DEPTH: usize = 64;

/// A cursor over bytes, reading one canonical JSON value. Bytes beyond ASCII may only appear
/// inside strings (the grammar refuses them elsewhere), and each string that has them is checked
/// to be UTF-8, so an accepted text is UTF-8.
struct Scan<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Scan<'b> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(word);
        self.at += word.len();
        found
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'n') => self.literal(b"null"),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'"') => self.string().is_some(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') if depth < MAX_CHECKED_DEPTH => self.array(depth + 1),
            Some(b'{') if depth < MAX_CHECKED_DEPTH => self.object(depth + 1),
            _ => false,
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.at += 1;
        if self.peek() == Some(b']') {
            self.at += 1;
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// Members in strictly increasing key order (so no key twice), as `write_canonical` sorts.
    fn object(&mut self, depth: usize) -> bool {
        self.at += 1;
        if self.peek() == Some(b'}') {
            self.at += 1;
            return true;
        }
        let mut previous: Option<std::borrow::Cow<'b, str>> = None;
        loop {
            let Some(key) = self.string() else {
                return false;
            };
            let Some(key) = decoded(key) else {
                return false;
            };
            if previous
                .as_deref()
                .is_some_and(|before| utf16_order(before, &key) != std::cmp::Ordering::Less)
            {
                return false;
            }
            previous = Some(key);
            if self.peek() != Some(b':') {
                return false;
            }
            self.at += 1;
            if !self.value(depth) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// A string escaped exactly as `write_string` escapes: the quote, the backslash and the
    /// control characters, each in its one form, and nothing else. Returns its text between the
    /// quotes, still escaped.
    fn string(&mut self) -> Option<&'b [u8]> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.at += 1;
        let start = self.at;
        let mut beyond_ascii = false;
        loop {
            self.at += plain_ascii_prefix(&self.bytes[self.at..], true);
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    let text = &self.bytes[start..self.at - 1];
                    if beyond_ascii && std::str::from_utf8(text).is_err() {
                        return None;
                    }
                    return Some(text);
                }
                b'\\' => {
                    let escape = self.bytes.get(self.at + 1..)?;
                    let length = match escape {
                        [b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't', ..] => 2,
                        [b'u', b'0', b'0', high @ (b'0' | b'1'), low @ (b'0'..=b'9' | b'a'..=b'f'), ..] =>
                        {
                            let code = hex_value(*high) << 4 | hex_value(*low);
                            // These five have a short form, which is the canonical one.
                            if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                            6
                        }
                        _ => return None,
                    };
                    self.at += length;
                }
                0x00..=0x1f => return None,
                _ => {
                    beyond_ascii = true;
                    self.at += 1;
                }
            }
        }
    }

    /// A number exactly as `ecmascript_number` writes the one it denotes.
    fn number(&mut self) -> bool {
        let start = self.at;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.at += 1;
        }
        let literal = &self.bytes[start..self.at];
        // Integers of at most 15 digits are exact doubles and print as themselves, except -0.
        let digits = literal.strip_prefix(b"-").unwrap_or(literal);
        let plain_integer = match digits {
            [b'0'] => literal.len() == 1,
            [b'1'..=b'9', rest @ ..] => rest.len() < 15 && rest.iter().all(u8::is_ascii_digit),
            _ => false,
        };
        if plain_integer {
            return true;
        }
        let Ok(text) = std::str::from_utf8(literal) else {
            return false;
        };
        text.parse::<Number>()
            .ok()
            .and_then(|number| ecmascript_number(&number).ok())
            .is_some_and(|canonical| canonical == text)
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

/// The text of a string that `Scan::string` accepted, its escapes undone.
fn decoded(escaped: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    if !escaped.contains(&b'\\') {
        return std::str::from_utf8(escaped)
            .ok()
            .map(std::borrow::Cow::Borrowed);
    }
    let mut text = Vec::with_capacity(escaped.len());
    let mut at = 0;
    while at < escaped.len() {
        match escaped[at] {
            b'\\' => {
                let (byte, length) = match escaped.get(at + 1)? {
                    b'"' => (b'"', 2),
                    b'\\' => (b'\\', 2),
                    b'b' => (0x08, 2),
                    b'f' => (0x0c, 2),
                    b'n' => (b'\n', 2),
                    b'r' => (b'\r', 2),
                    b't' => (b'\t', 2),
                    _ => (
                        hex_value(*escaped.get(at + 4)?) << 4 | hex_value(*escaped.get(at + 5)?),
                        6,
                    ),
                };
                text.push(byte);
                at += length;
            }
            byte => {
                text.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(text).ok().map(std::borrow::Cow::Owned)
}

/// `H(x)` of the contract: lowercase hex SHA-256 of the JCS bytes of `value`.
pub fn hash(value: &Value) -> Result<String, JcsError> {
    Ok(hash_bytes(&canonical(value)?))
}

/// Admits a parsed body as I-JSON, and writes every number in it as its canonical form.
///
/// Refuses integers beyond ±(2^53−1) and numbers that are not finite as a double (RFC 7493 §2.2).
/// Such numbers would be silently rounded by JCS, so two different bodies could share one hash.
/// A number of magnitude 2^53 or more is refused however it is written (`1e16`,
/// `9007199254740993.0`): a double cannot tell neighbouring integers apart there, so
/// `9007199254740993.0` and `9007199254740992.0` would hash alike, and JCS would write such a
/// value as integer digits that this check refuses when sent back.
///
/// Every number admitted is rewritten as JCS writes it (`1.0` and `1e0` become `1`, `-0` becomes
/// `0`): the value fedcore hashes and stores is then the value it works with and answers with, so
/// an answer to a write shows the numbers as a later read of the same object does.
pub fn admit(value: &mut Value) -> Result<(), IJsonError> {
    let mut path = String::new();
    admit_at(value, &mut path)
}

/// 2^53: from here on a double skips integers.
const TWO_TO_THE_53: f64 = 9_007_199_254_740_992.0;

/// The largest integer a double holds exactly, 2^53−1, as decimal digits.
const MAX_SAFE_INTEGER_DIGITS: &str = "9007199254740991";

fn admit_at(value: &mut Value, path: &mut String) -> Result<(), IJsonError> {
    match value {
        Value::Number(number) => {
            check_number(number, path)?;
            *number = canonical_number(number, path)?;
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let parent_length = path.len();
                // Writing to a String cannot fail.
                let _ = write!(path, "[{index}]");
                admit_at(item, path)?;
                path.truncate(parent_length);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let parent_length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                admit_at(item, path)?;
                path.truncate(parent_length);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

fn check_number(number: &Number, path: &str) -> Result<(), IJsonError> {
    let literal = number.as_str();
    let is_integer_literal = !literal.contains(['.', 'e', 'E']);
    if is_integer_literal {
        let digits = literal.trim_start_matches('-').trim_start_matches('0');
        // Equal-length digit strings compare like the numbers they spell.
        let beyond_safe_range = digits.len() > MAX_SAFE_INTEGER_DIGITS.len()
            || (digits.len() == MAX_SAFE_INTEGER_DIGITS.len() && digits > MAX_SAFE_INTEGER_DIGITS);
        if beyond_safe_range {
            return Err(IJsonError {
                path: path.to_string(),
                message: format!(
                    "integer {} is outside the I-JSON range of ±(2^53−1)",
                    abbreviated(literal)
                ),
            });
        }
    }
    match number.as_f64() {
        None => Err(IJsonError {
            path: path.to_string(),
            message: format!(
                "number {} is not finite as an IEEE 754 double",
                abbreviated(literal)
            ),
        }),
        Some(value) if value.abs() >= TWO_TO_THE_53 => Err(IJsonError {
            path: path.to_string(),
            message: format!(
                "number {} is, as a double, 2^53 or more in magnitude, where a double no longer \
                 holds every integer: outside the I-JSON range of ±(2^53−1) however it is written",
                abbreviated(literal)
            ),
        }),
        Some(_) => Ok(()),
    }
}

/// `number` as the number JCS writes for it. Every number `check_number` admits has one: it is
/// finite as a double, and the ECMAScript form of a finite double is a JSON number.
fn canonical_number(number: &Number, path: &str) -> Result<Number, IJsonError> {
    ecmascript_number(number)
        .ok()
        .and_then(|text| text.parse::<Number>().ok())
        .ok_or_else(|| IJsonError {
            path: path.to_string(),
            message: format!(
                "number {} has no canonical form",
                abbreviated(number.as_str())
            ),
        })
}

/// Keeps error messages short when a client sends a number with thousands of digits.
fn abbreviated(literal: &str) -> String {
    const LIMIT: usize = 40;
    match literal.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &literal[..cut]),
        None => literal.to_string(),
    }
}

fn located_message(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

/// Escapes like ECMAScript `JSON.stringify` (RFC 8785 §3.2.2.2): only the quote, the backslash and
/// control characters below U+0020 are escaped; everything else, non-ASCII included, is literal.
/// Every byte that needs escaping is ASCII, and no byte of a multi-byte UTF-8 sequence is ASCII,
/// so the text is copied in runs between those bytes (`verify` canonicalizes every entry).
pub fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    // Nearly every string fedcore hashes has nothing to escape: find that out a chunk at a time.
    if plain_ascii_prefix(bytes, false) == bytes.len() {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut plain_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if !matches!(byte, b'"' | b'\\' | 0x00..=0x1f) {
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..index]);
        plain_from = index + 1;
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            control => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(control >> 4)],
                HEX[usize::from(control & 0xf)],
            ]),
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// The length of the longest prefix of `bytes` with nothing `write_string` escapes (the quote,
/// the backslash, control characters) and, when `ascii_only`, nothing beyond ASCII. Looks at 16
/// bytes at a time, in a form the compiler turns into vector instructions.
fn plain_ascii_prefix(bytes: &[u8], ascii_only: bool) -> usize {
    let special = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\') | (ascii_only & (b >= 0x80));
    let mut at = 0;
    for chunk in bytes.chunks_exact(16) {
        if chunk.iter().fold(false, |found, &b| found | special(b)) {
            break;
        }
        at += 16;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| special(b))
        .unwrap_or(bytes.len() - at)
}

/// Formats a number as ECMAScript `Number.prototype.toString` formats the nearest double
/// (ECMA-262 Number::toString, RFC 8785 §3.2.2.3).
fn ecmascript_number(number: &Number) -> Result<String, JcsError> {
    let value = number
        .as_f64()
        .ok_or_else(|| JcsError::NonFiniteNumber(abbreviated(number.as_str())))?;
    if value == 0.0 {
        // Covers -0, which ECMAScript prints as "0".
        return Ok("0".to_string());
    }
    // Rust's `{:e}` gives the shortest digit string that round-trips, as ECMA-262 requires; only
    // the layout of those digits differs, so take them apart and lay them out again.
    let scientific = format!("{:e}", value.abs());
    // A finite double always prints as `<mantissa>e<exponent>`; the errors below cannot happen.
    let (mantissa, exponent) = scientific
        .split_once('e')
        .ok_or_else(|| JcsError::NonFiniteNumber(scientific.clone()))?;
    let exponent: i32 = exponent
        .parse()
        .map_err(|_| JcsError::NonFiniteNumber(scientific.clone()))?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = prefer_even_digits_on_tie(digits, exponent, value.abs());
    // In ECMA-262's terms the value is 0.digits × 10^point, with k = digits.len().
    let point = exponent + 1;
    let digit_count = digits.len() as i32;

    let mut text = String::new();
    if value < 0.0 {
        text.push('-');
    }
    if digit_count <= point && point <= 21 {
        text.push_str(&digits);
        text.extend(std::iter::repeat_n('0', (point - digit_count) as usize));
    } else if 0 < point && point <= 21 {
        let (whole, fraction) = digits.split_at(point as usize);
        text.push_str(whole);
        text.push('.');
        text.push_str(fraction);
    } else if -6 < point && point <= 0 {
        text.push_str("0.");
        text.extend(std::iter::repeat_n('0', (-point) as usize));
        text.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        text.push_str(first);
        if !rest.is_empty() {
            text.push('.');
            text.push_str(rest);
        }
        let sign = if point - 1 < 0 { '-' } else { '+' };
        let _ = write!(text, "e{sign}{}", (point - 1).abs());
    }
    Ok(text)
}

/// Rust's shortest formatting breaks a tie between two equally short, equally close digit strings
/// upwards; ECMA-262 Number::toString takes the even one (RFC 8785 Appendix B lists
/// 1424953923781206.25, which must print as 1424953923781206.2).
fn prefer_even_digits_on_tie(digits: String, exponent: i32, magnitude: f64) -> String {
    let count = digits.len();
    // b'0' is even, so an ASCII digit's byte has the parity of the digit.
    let last_is_odd = digits.bytes().last().is_some_and(|digit| digit % 2 == 1);
    if !last_is_odd {
        return digits;
    }
    // A tie means the exact value has exactly one digit more than `digits`, and that digit is 5.
    // The cheap rounded check rules out nearly every number before the exact expansion is built.
    let one_digit_more = format!("{:.*e}", count, magnitude);
    if !one_digit_more
        .split_once('e')
        .is_some_and(|(mantissa, _)| mantissa.ends_with('5'))
    {
        return digits;
    }
    // The exact decimal expansion of any double has at most 767 significant digits.
    let exact = format!("{magnitude:.800e}");
    let Some((exact_mantissa, exact_exponent)) = exact.split_once('e') else {
        return digits;
    };
    let exact_digits: String = exact_mantissa.chars().filter(|c| *c != '.').collect();
    let exact_digits = exact_digits.trim_end_matches('0');
    let is_tie = exact_exponent.parse() == Ok(exponent)
        && exact_digits.len() == count + 1
        && exact_digits.ends_with('5');
    if !is_tie {
        return digits;
    }
    // The two candidates are the expansion cut before the 5, and that plus one in the last place.
    let rounded_down = &exact_digits[..count];
    let candidate = match rounded_down.bytes().last() {
        Some(last) if last % 2 == 0 => rounded_down.to_string(),
        Some(last) if last < b'9' => {
            format!("{}{}", &rounded_down[..count - 1], char::from(last + 1))
        }
        _ => return digits,
    };
    let candidate_value = format!("{}.{}e{exponent}", &candidate[..1], &candidate[1..]).parse();
    if candidate_value == Ok(magnitude) {
        candidate
    } else {
        digits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("test JSON parses")
    }

    fn canonical_text(text: &str) -> String {
        let bytes = canonical(&parse(text)).expect("value is canonicalizable");
        String::from_utf8(bytes).expect("JCS output is UTF-8")
    }

    #[test]
    fn keys_are_sorted_by_utf16_code_units_as_in_rfc_8785_section_3_2_3() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
            \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
            \"\u{1f600}\":\"Emoji: Grinning Face\",\
            \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canonical_text(input), expected);
    }

    #[test]
    fn numbers_follow_the_ecmascript_form_of_rfc_8785_appendix_b() {
        let cases = [
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("1", "1"),
            ("-1", "-1"),
            ("1e21", "1e+21"),
            ("1e+21", "1e+21"),
            ("999999999999999900000", "999999999999999900000"),
            ("5e-324", "5e-324"),
            ("-5e-324", "-5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("-1.7976931348623157e308", "-1.7976931348623157e+308"),
            ("9007199254740992", "9007199254740992"),
            ("-9007199254740992", "-9007199254740992"),
            ("295147905179352830000", "295147905179352830000"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("1e-7", "1e-7"),
            ("333333333.33333329", "333333333.3333333"),
            ("1E30", "1e+30"),
            ("4.50", "4.5"),
            ("2e-3", "0.002"),
            ("0.000000000000000000000000001", "1e-27"),
            ("1.5e300", "1.5e+300"),
            ("123.456", "123.456"),
            ("100", "100"),
            ("1e20", "100000000000000000000"),
        ];
        for (literal, expected) in cases {
            assert_eq!(canonical_text(literal), expected, "literal {literal}");
        }
    }

    #[test]
    fn every_double_of_the_rfc_8785_appendix_b_table_formats_as_listed() {
        let table: [(u64, &str); 24] = [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expected) in table {
            let number = Number::from_f64(f64::from_bits(bits)).map(Value::Number);
            let text = number.and_then(|value| canonical(&value).ok());
            assert_eq!(text, Some(expected.as_bytes().to_vec()), "bits {bits:016x}");
        }
    }

    #[test]
    fn numbers_built_from_doubles_use_the_same_form() {
        assert_eq!(canonical(&json!(0.1)).ok(), Some(b"0.1".to_vec()));
        assert_eq!(canonical(&json!(-0.0)).ok(), Some(b"0".to_vec()));
        assert_eq!(canonical(&json!(1e21)).ok(), Some(b"1e+21".to_vec()));
    }

    #[test]
    fn a_number_beyond_the_double_range_has_no_canonical_form() {
        let result = canonical(&parse("1e400"));
        assert!(matches!(result, Err(JcsError::NonFiniteNumber(_))));
    }

    #[test]
    fn the_rfc_8785_section_3_2_4_example_canonicalizes_exactly() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let expected = "{\"literals\":[null,true,false],\
            \"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
            \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(canonical_text(input), expected);
    }

    #[test]
    fn strings_escape_only_what_json_stringify_escapes() {
        let value = json!("\u{8}\u{c}\n\r\t\u{0}\u{1f}\u{7f}\u{2028}\u{2029}é/<");
        let expected = "\"\\b\\f\\n\\r\\t\\u0000\\u001f\u{7f}\u{2028}\u{2029}é/<\"";
        assert_eq!(canonical(&value).ok(), Some(expected.as_bytes().to_vec()));
    }

    #[test]
    fn every_control_character_is_escaped_and_nothing_else_is() {
        for code in 0u32..0x80 {
            let character = char::from_u32(code).expect("ASCII");
            let text = format!("a{character}é{character}");
            let escaped = match character {
                '"' => "\\\"".to_string(),
                '\\' => "\\\\".to_string(),
                '\u{8}' => "\\b".to_string(),
                '\u{c}' => "\\f".to_string(),
                '\n' => "\\n".to_string(),
                '\r' => "\\r".to_string(),
                '\t' => "\\t".to_string(),
                c if c < '\u{20}' => format!("\\u{code:04x}"),
                c => c.to_string(),
            };
            let expected = format!("\"a{escaped}é{escaped}\"");
            assert_eq!(
                canonical(&json!(text)).ok(),
                Some(expected.into_bytes()),
                "U+{code:04X}"
            );
        }
    }

    #[test]
    fn a_character_to_escape_is_found_wherever_it_sits_in_a_long_string() {
        for at in 0..40 {
            for (special, escaped) in [('"', "\\\""), ('\\', "\\\\"), ('\u{1}', "\\u0001")] {
                let text: String = (0..40)
                    .map(|i| if i == at { special } else { 'x' })
                    .collect();
                let expected = format!("\"{}{escaped}{}\"", "x".repeat(at), "x".repeat(39 - at));
                assert_eq!(
                    canonical(&json!(text)).ok(),
                    Some(expected.clone().into_bytes()),
                    "at {at}"
                );
                assert!(is_canonical(expected.as_bytes()), "at {at}");
            }
        }
    }

    #[test]
    fn nested_objects_are_sorted_at_every_level_without_whitespace() {
        let text = r#"{ "b": {"z": [1, {"y": 2, "x": 1}], "a": {}}, "a": [ ] }"#;
        assert_eq!(
            canonical_text(text),
            r#"{"a":[],"b":{"a":{},"z":[1,{"x":1,"y":2}]}}"#
        );
    }

    #[test]
    fn empty_containers_and_literals_canonicalize_to_themselves() {
        assert_eq!(canonical_text("{}"), "{}");
        assert_eq!(canonical_text("[]"), "[]");
        assert_eq!(canonical_text("null"), "null");
        assert_eq!(canonical_text("true"), "true");
        assert_eq!(canonical_text("\"\""), "\"\"");
    }

    #[test]
    fn the_hash_of_null_is_the_sha256_of_the_four_letters_null() {
        let expected = "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b";
        assert_eq!(hash(&Value::Null).ok().as_deref(), Some(expected));
        assert_eq!(hash_bytes(b"null"), expected);
    }

    #[test]
    fn equal_values_written_differently_hash_the_same() {
        let first = hash(&parse(r#"{"b": 1.0, "a": [10e-1]}"#)).ok();
        let second = hash(&parse(r#"{"a":[1],"b":1}"#)).ok();
        assert!(first.is_some());
        assert_eq!(first, second);
    }

    /// A small deterministic generator (xorshift), so the property tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn random_text(rng: &mut Rng) -> String {
        const CHARS: &[char] = &[
            'a', 'b', 'Z', '0', ' ', '"', '\\', '/', '\u{0}', '\u{8}', '\u{9}', '\n', '\u{c}',
            '\r', '\u{1f}', '\u{7f}', 'é', '€', '\u{2028}', '😀', '\u{fb33}',
        ];
        (0..rng.below(6))
            .map(|_| CHARS[rng.below(CHARS.len())])
            .collect()
    }

    fn random_value(rng: &mut Rng, depth: usize) -> Value {
        const NUMBERS: &[&str] = &[
            "0",
            "-0",
            "7",
            "-12",
            "123456789012345",
            "1234567890123456",
            "9007199254740993",
            "0.1",
            "1.5",
            "-2.25",
            "1e21",
            "1E30",
            "5e-324",
            "333333333.33333329",
            "1e-7",
            "4.50",
        ];
        match rng.below(if depth > 4 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 0),
            2 | 3 => parse(NUMBERS[rng.below(NUMBERS.len())]),
            4 => Value::String(random_text(rng)),
            5 => (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
            _ => Value::Object(
                (0..rng.below(5))
                    .map(|_| (random_text(rng), random_value(rng, depth + 1)))
                    .collect(),
            ),
        }
    }

    /// `is_canonical` may say no to a canonical text; it must never say yes to one that is not.
    fn assert_sound(bytes: &[u8]) {
        if is_canonical(bytes) {
            let value: Value = serde_json::from_slice(bytes)
                .unwrap_or_else(|e| panic!("accepted {:?}: {e}", String::from_utf8_lossy(bytes)));
            let again = canonical(&value).expect("accepted text canonicalizes");
            assert_eq!(
                again,
                bytes,
                "accepted a non-canonical text: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn canonical_text_is_recognised_and_nothing_else_is() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let text = canonical(&random_value(&mut rng, 0)).expect("canonicalizes");
            assert!(
                is_canonical(&text),
                "refused {}",
                String::from_utf8_lossy(&text)
            );
            // Every small edit either keeps it canonical or is refused.
            for _ in 0..8 {
                let mut edited = text.clone();
                let at = rng.below(edited.len() + 1);
                match rng.below(5) {
                    0 => edited.insert(at, b" ,:\"\\{}[]0-.eu"[rng.below(14)]),
                    1 if at < edited.len() => {
                        edited.remove(at);
                    }
                    2 if at < edited.len() => edited[at] ^= 1 << rng.below(8),
                    3 if at + 1 < edited.len() => edited.swap(at, at + 1),
                    _ => {
                        let from = rng.below(edited.len() + 1);
                        let copied: Vec<u8> = edited[from.min(at)..from.max(at)].to_vec();
                        edited.splice(at..at, copied);
                    }
                }
                assert_sound(&edited);
            }
        }
    }

    #[test]
    fn texts_that_parse_to_the_same_value_but_are_written_otherwise_are_refused() {
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"b":1,"a":2}"#,
            r#"{"a" :1}"#,
            r#" null"#,
            r#"null "#,
            r#"[1,]"#,
            r#""\u0041""#,
            r#""\/""#,
            r#""\u000a""#,
            r#""\u001F""#,
            r#""\ud83d\ude00""#,
            "\"\u{1}\"",
            "1.0",
            "-0",
            "01",
            "1e21",
            "1E+21",
            "0.10",
            "",
        ] {
            assert!(!is_canonical(text.as_bytes()), "accepted {text:?}");
        }
        assert!(
            !is_canonical(b"\"\xff\""),
            "accepted bytes that are not UTF-8"
        );
        for text in [
            r#""\u001f\b\"\\""#,
            "1e+21",
            "0.1",
            "-5e-324",
            "123456789012345",
            "9007199254740992",
            r#"{"":0,"\r":1,"1":[],"é":{},"😀":null,"דּ":true}"#,
        ] {
            assert!(is_canonical(text.as_bytes()), "refused {text:?}");
        }
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(!is_canonical(deep.as_bytes()), "deeper than it follows");
        assert_sound(deep.as_bytes());
    }

    #[test]
    fn a_digest_matches_only_its_own_lowercase_hex() {
        let digest = digest(b"null");
        assert!(is_hex_of(NULL_HEX, &digest));
        assert!(!is_hex_of(&NULL_HEX.to_uppercase(), &digest));
        assert!(!is_hex_of(&NULL_HEX[..63], &digest));
        assert!(!is_hex_of(&format!("{NULL_HEX}0"), &digest));
        assert!(!is_hex_of(ZERO_HEX, &digest));
    }

    const NULL_HEX: &str = "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b";
    const ZERO_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn the_largest_safe_integer_is_valid_i_json() {
        assert_eq!(admit(&mut parse("9007199254740991")), Ok(()));
        assert_eq!(admit(&mut parse("-9007199254740991")), Ok(()));
        assert_eq!(admit(&mut parse("1.5")), Ok(()));
        assert_eq!(admit(&mut parse("-0")), Ok(()));
    }

    #[test]
    fn integers_beyond_the_safe_range_are_refused() {
        for literal in [
            "9007199254740992",
            "-9007199254740992",
            "123456789012345678901",
        ] {
            let error = admit(&mut parse(literal)).err();
            assert_eq!(
                error.map(|e| e.path),
                Some(String::new()),
                "literal {literal}"
            );
        }
    }

    #[test]
    fn numbers_of_magnitude_two_to_the_53_or_more_are_refused_however_written() {
        for literal in [
            "9007199254740993.0",
            "9007199254740992.0",
            "12345678901234567890.0",
            "1e16",
            "-1e16",
            "9.007199254740992e15",
            "1e300",
            "1e400",
            "-1e400",
        ] {
            assert!(admit(&mut parse(literal)).is_err(), "literal {literal}");
        }
        for literal in [
            "9007199254740991.0",
            "9.007199254740991e15",
            "1e15",
            "-1e15",
            "0.5",
        ] {
            assert_eq!(admit(&mut parse(literal)), Ok(()), "literal {literal}");
        }
        // What is accepted is accepted again in the canonical form JCS stores it in.
        for literal in ["9007199254740991.0", "1e15", "123.456e3", "-0.0"] {
            let canonical = canonical(&parse(literal)).expect("canonical");
            let mut again = parse(std::str::from_utf8(&canonical).expect("utf-8"));
            assert_eq!(admit(&mut again), Ok(()), "{literal} stored as {again}");
        }
    }

    #[test]
    fn admitted_numbers_are_rewritten_as_jcs_writes_them() {
        let mut body = parse(
            r#"{"a": 1.0, "b": [1e2, -0, 0.50, 1E-7, 123.456e3], "c": {"d": 25E-1, "e": "1.0"}}"#,
        );
        assert_eq!(admit(&mut body), Ok(()));
        let written = serde_json::to_string(&body).expect("serializes");
        assert_eq!(
            written,
            r#"{"a":1,"b":[100,0,0.5,1e-7,123456],"c":{"d":2.5,"e":"1.0"}}"#
        );
        // The rewritten value is its own canonical form: serde writes what JCS writes.
        assert_eq!(written.as_bytes(), canonical(&body).expect("canonical"));
    }

    #[test]
    fn the_i_json_error_names_the_path_to_the_number() {
        let mut body = parse(r#"{"step_id": "x", "input": {"items": [1, 2, {"amount": 1e400}]}}"#);
        let error = admit(&mut body).err();
        assert_eq!(
            error.as_ref().map(|e| e.path.as_str()),
            Some("input.items[2].amount")
        );
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("input.items[2].amount: "), "{message}");

        let mut nested_arrays = parse("[[0], [1, 9007199254740992]]");
        let error = admit(&mut nested_arrays).err();
        assert_eq!(error.map(|e| e.path), Some("[1][1]".to_string()));
    }
}
