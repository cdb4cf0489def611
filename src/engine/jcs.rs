//! RFC 8785 JSON Canonicalization Scheme (JCS) and the hash `H(x)` that every receipt is built on.
//! `canonical` writes the one byte sequence a JSON value has under JCS: keys sorted by UTF-16 code
//! units, no whitespace, strings escaped as ECMAScript's `JSON.stringify` does, numbers in
//! ECMAScript `Number.prototype.toString` form. `check_i_json` refuses the numbers (RFC 7493) that
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

/// Writes the canonical bytes of an object of a fixed shape field by field, straight from the
/// model types, without building a `Value`: receipts and audit entries are hashed several times
/// per request. The caller names the fields in RFC 8785 order (by UTF-16 code units; debug
/// builds check it), so the bytes equal `canonical` of the same object built as a `Value`.
pub struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
    #[cfg(debug_assertions)]
    last_key: &'static str,
}

impl<'o> ObjectWriter<'o> {
    pub fn new(out: &'o mut Vec<u8>) -> ObjectWriter<'o> {
        out.push(b'{');
        ObjectWriter {
            out,
            first: true,
            #[cfg(debug_assertions)]
            last_key: "",
        }
    }

    fn key(&mut self, key: &'static str) {
        #[cfg(debug_assertions)]
        {
            assert!(
                self.first || utf16_order(self.last_key, key).is_lt(),
                "{key} after {}",
                self.last_key
            );
            self.last_key = key;
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_string(key, self.out);
        self.out.push(b':');
    }

    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.key(key);
        write_string(value, self.out);
        self
    }

    /// A string, or `null`.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    pub fn null(&mut self, key: &'static str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    /// An integer, in the ECMAScript form of the double nearest to it.
    pub fn int(&mut self, key: &'static str, value: i64) -> &mut Self {
        self.key(key);
        write_int(value, self.out);
        self
    }

    /// Any value, canonicalized.
    pub fn value(&mut self, key: &'static str, value: &Value) -> Result<&mut Self, JcsError> {
        self.key(key);
        write_canonical(value, self.out)?;
        Ok(self)
    }

    /// An array of strings.
    pub fn strs(&mut self, key: &'static str, values: &[String]) -> &mut Self {
        self.key(key);
        self.out.push(b'[');
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                self.out.push(b',');
            }
            write_string(value, self.out);
        }
        self.out.push(b']');
        self
    }

    /// A nested object of a fixed shape, written by `write` in the same way.
    pub fn object(
        &mut self,
        key: &'static str,
        write: impl FnOnce(&mut ObjectWriter<'_>) -> Result<(), JcsError>,
    ) -> Result<&mut Self, JcsError> {
        self.key(key);
        let mut inner = ObjectWriter::new(self.out);
        write(&mut inner)?;
        inner.finish();
        Ok(self)
    }

    /// Closes the object.
    pub fn finish(self) {
        self.out.push(b'}');
    }
}

/// An integer as `canonical` writes the same integer held in a `Value`: its digits while a double
/// holds it exactly, else the ECMAScript form of the nearest double.
fn write_int(value: i64, out: &mut Vec<u8>) {
    const MAX_EXACT: u64 = 1 << 53;
    if value.unsigned_abs() <= MAX_EXACT {
        let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
    } else {
        // A double's nearest value to an i64 is finite, so this cannot fail.
        let text = ecmascript_number(&Number::from(value)).unwrap_or_default();
        out.extend_from_slice(text.as_bytes());
    }
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
    hex::encode(Sha256::digest(bytes))
}

/// `H(x)` of the contract: lowercase hex SHA-256 of the JCS bytes of `value`.
pub fn hash(value: &Value) -> Result<String, JcsError> {
    Ok(hash_bytes(&canonical(value)?))
}

/// Refuses integers beyond ±(2^53−1) and numbers that are not finite as a double (RFC 7493 §2.2).
/// Such numbers would be silently rounded by JCS, so two different bodies could share one hash.
pub fn check_i_json(value: &Value) -> Result<(), IJsonError> {
    let mut path = String::new();
    check_i_json_at(value, &mut path)
}

/// The largest integer a double holds exactly, 2^53−1, as decimal digits.
const MAX_SAFE_INTEGER_DIGITS: &str = "9007199254740991";

fn check_i_json_at(value: &Value, path: &mut String) -> Result<(), IJsonError> {
    match value {
        Value::Number(number) => check_number(number, path),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let parent_length = path.len();
                // Writing to a String cannot fail.
                let _ = write!(path, "[{index}]");
                check_i_json_at(item, path)?;
                path.truncate(parent_length);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                let parent_length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                check_i_json_at(item, path)?;
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
    if number.as_f64().is_none() {
        return Err(IJsonError {
            path: path.to_string(),
            message: format!(
                "number {} is not finite as an IEEE 754 double",
                abbreviated(literal)
            ),
        });
    }
    Ok(())
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
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
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
    fn an_object_written_field_by_field_is_the_canonical_form_of_the_same_value() {
        let nested =
            parse(r#"{"b": [1, 2.50, -0.0, 1E300, "\u0007"], "a": {"é": null, "z": true}}"#);
        for int in [
            0,
            -1,
            42,
            9_007_199_254_740_991,
            9_007_199_254_740_992,
            9_007_199_254_740_993,
            -9_007_199_254_740_993,
            i64::MAX,
            i64::MIN,
        ] {
            for text in [
                None,
                Some(""),
                Some("plain"),
                Some("q\"b\\n\n\u{1f}é\u{10000}"),
            ] {
                let mut out = Vec::new();
                let mut object = ObjectWriter::new(&mut out);
                object.int("a", int).opt_str("b", text).null("c");
                object.value("d", &nested).unwrap();
                object
                    .object("e", |inner| {
                        inner.str("x", "y").strs("z", &["1".into(), "\"".into()]);
                        Ok(())
                    })
                    .unwrap();
                object.strs("f", &[]).str("g\u{e9}", "h");
                object.finish();
                let value = json!({"a": int, "b": text, "c": null, "d": nested,
                    "e": {"x": "y", "z": ["1", "\""]}, "f": [], "g\u{e9}": "h"});
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(canonical(&value).unwrap()).unwrap()
                );
            }
        }
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

    #[test]
    fn the_largest_safe_integer_is_valid_i_json() {
        assert_eq!(check_i_json(&parse("9007199254740991")), Ok(()));
        assert_eq!(check_i_json(&parse("-9007199254740991")), Ok(()));
        assert_eq!(check_i_json(&parse("1.5")), Ok(()));
        assert_eq!(check_i_json(&parse("-0")), Ok(()));
    }

    #[test]
    fn integers_beyond_the_safe_range_are_refused() {
        for literal in [
            "9007199254740992",
            "-9007199254740992",
            "123456789012345678901",
        ] {
            let error = check_i_json(&parse(literal)).err();
            assert_eq!(
                error.map(|e| e.path),
                Some(String::new()),
                "literal {literal}"
            );
        }
    }

    #[test]
    fn large_numbers_written_as_decimals_are_only_refused_when_not_finite() {
        assert_eq!(check_i_json(&parse("9007199254740993.0")), Ok(()));
        assert_eq!(check_i_json(&parse("1e300")), Ok(()));
        assert!(check_i_json(&parse("1e400")).is_err());
        assert!(check_i_json(&parse("-1e400")).is_err());
    }

    #[test]
    fn the_i_json_error_names_the_path_to_the_number() {
        let body = parse(r#"{"step_id": "x", "input": {"items": [1, 2, {"amount": 1e400}]}}"#);
        let error = check_i_json(&body).err();
        assert_eq!(
            error.as_ref().map(|e| e.path.as_str()),
            Some("input.items[2].amount")
        );
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("input.items[2].amount: "), "{message}");

        let nested_arrays = parse("[[0], [1, 9007199254740992]]");
        let error = check_i_json(&nested_arrays).err();
        assert_eq!(error.map(|e| e.path), Some("[1][1]".to_string()));
    }
}
