//! Python's `json.dumps` and float `repr` over template values.
//!
//! Chat templates serialise tool schemas and tool-call arguments with `tojson`, and transformers replaces Jinja's
//! HTML-escaping `tojson` with `json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...)`. The
//! tokens a model was trained on depend on every byte of that output (`", "` and `": "` separators, `1e-07`, raw
//! non-ASCII), so it is reproduced here rather than approximated with serde_json.

use std::fmt::Write;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// The options of `json.dumps` that templates pass.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None` writes everything on one line; `Some(prefix)` breaks lines and indents each level by `prefix`.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl DumpOptions {
    /// The defaults of transformers' `tojson`, with Python's rule that an indent turns the item separator into a
    /// bare comma.
    pub fn new(ensure_ascii: bool, indent: Option<String>) -> Self {
        let item_separator = if indent.is_some() { "," } else { ", " };
        Self {
            ensure_ascii,
            indent,
            item_separator: item_separator.to_string(),
            key_separator: ": ".to_string(),
            sort_keys: false,
        }
    }

    /// Reads `ensure_ascii`, `indent` (a number of spaces or a string), `separators` (a pair of strings) and
    /// `sort_keys` from a filter call's keyword arguments.
    pub fn from_kwargs(kwargs: &Kwargs) -> Result<Self, Error> {
        let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
        let indent = match kwargs.get::<Option<Value>>("indent")? {
            None => None,
            Some(value) if value.is_none() => None,
            Some(value) => Some(indent_prefix(&value)?),
        };
        let mut options = Self::new(ensure_ascii, indent);
        if let Some(separators) = kwargs.get::<Option<Value>>("separators")? {
            if !separators.is_none() {
                let (item, key) = separator_pair(&separators)?;
                options.item_separator = item;
                options.key_separator = key;
            }
        }
        options.sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
        kwargs.assert_all_used()?;
        Ok(options)
    }
}

/// The `tojson` filter as transformers defines it.
pub fn tojson_filter(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let options = DumpOptions::from_kwargs(&kwargs)?;
    Ok(Value::from_safe_string(dumps(&value, &options)?))
}

/// `json.dumps(value, ...)`.
pub fn dumps(value: &Value, options: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, options, 0)?;
    Ok(out)
}

/// Python's `repr(float)`: the shortest digits that round-trip, in positional notation for exponents from -4 to
/// 15 and in scientific notation (`1e-07`, `1.5e+16`) otherwise; `inf`, `-inf` and `nan` spelled as Python does.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // Rust's `{:e}` writes the shortest round-trip digits as `d[.ddd]e[-]x`, the digits Python's repr uses too.
    let scientific = format!("{:e}", x.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        format!("{sign}{}", positional(&digits, exponent))
    } else {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{sign}{first}{fraction}e{exponent_sign}{:02}",
            exponent.abs()
        )
    }
}

/// `digits` (d.ddd x 10^exponent) written out with a decimal point and at least one digit after it.
fn positional(digits: &str, exponent: i32) -> String {
    if exponent < 0 {
        let zeros = "0".repeat((-exponent - 1) as usize);
        return format!("0.{zeros}{digits}");
    }
    let integer_len = exponent as usize + 1;
    if digits.len() <= integer_len {
        let zeros = "0".repeat(integer_len - digits.len());
        format!("{digits}{zeros}.0")
    } else {
        let (integer, fraction) = digits.split_at(integer_len);
        format!("{integer}.{fraction}")
    }
}

fn indent_prefix(value: &Value) -> Result<String, Error> {
    if let Some(text) = value.as_str() {
        return Ok(text.to_string());
    }
    match i64::try_from(value.clone()) {
        Ok(spaces) => Ok(" ".repeat(spaces.max(0) as usize)),
        Err(_) => Err(invalid(format!(
            "tojson: indent must be an integer or a string, got {value}"
        ))),
    }
}

fn separator_pair(value: &Value) -> Result<(String, String), Error> {
    let items: Vec<Value> = value
        .try_iter()
        .map_err(|_| invalid("tojson: separators must be a pair of strings"))?
        .collect();
    match items.as_slice() {
        [item, key] => match (item.as_str(), key.as_str()) {
            (Some(item), Some(key)) => Ok((item.to_string(), key.to_string())),
            _ => Err(invalid("tojson: separators must be a pair of strings")),
        },
        _ => Err(invalid("tojson: separators must be a pair of strings")),
    }
}

fn write_value(
    out: &mut String,
    value: &Value,
    options: &DumpOptions,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), options),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), &items, options, depth, |out, item| {
                write_value(out, item, options, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((map_key(&key)?, item));
            }
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(
                out,
                ('{', '}'),
                &entries,
                options,
                depth,
                |out, (key, item)| {
                    write_string(out, key, options);
                    out.push_str(&options.key_separator);
                    write_value(out, item, options, depth + 1)
                },
            )?;
        }
        ValueKind::Undefined => return Err(invalid("tojson: cannot serialise an undefined value")),
        kind => return Err(invalid(format!("tojson: cannot serialise a {kind} value"))),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    (open, close): (char, char),
    items: &[T],
    options: &DumpOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push_str(&options.item_separator);
        }
        if let Some(indent) = &options.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        write_item(out, item)?;
    }
    if let Some(indent) = &options.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Integers print in full; floats as Python prints them (`2.0`, `1e-07`), never as Rust does (`2`, `0.0000001`).
fn write_number(out: &mut String, value: &Value) {
    match f64::try_from(value.clone()) {
        Ok(x) if !value.is_integer() => out.push_str(&json_float(x)),
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// `json.dumps` spells non-finite floats as JavaScript does and finite ones as `repr`.
fn json_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        float_repr(x)
    }
}

/// JSON object keys are strings; Python converts numbers, booleans and None keys to their JSON spelling.
fn map_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".to_string()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::Number => {
            let mut text = String::new();
            write_number(&mut text, key);
            Ok(text)
        }
        kind => Err(invalid(format!(
            "tojson: keys must be str, int, float, bool or None, not {kind}"
        ))),
    }
}

fn write_string(out: &mut String, text: &str, options: &DumpOptions) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // Python's ensure_ascii escapes everything outside printable ASCII, DEL included.
            c if options.ensure_ascii && c > '~' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}
