//! The `tojson` filter as transformers defines it for chat templates:
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//! sort_keys=False)`. Unlike minijinja's built-in filter it does not escape
//! `<`, `>`, `&` and `'`, and it uses Python's separators (`", "`, `": "`).

use std::fmt::Write;

use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Nesting deeper than this is treated as a circular reference.
const MAX_DEPTH: usize = 256;

/// Positional parameters after the value, in Python's order.
const PARAMS: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];

struct Options {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: {}", msg.into()),
    )
}

impl Options {
    fn parse(args: &[Value], kwargs: &Kwargs) -> Result<Self, Error> {
        if args.len() > PARAMS.len() {
            return Err(Error::from(ErrorKind::TooManyArguments));
        }
        let mut vals: [Option<Value>; 4] = Default::default();
        for (i, v) in args.iter().enumerate() {
            vals[i] = Some(v.clone());
        }
        for (i, name) in PARAMS.iter().enumerate() {
            if let Some(v) = kwargs.get::<Option<Value>>(name)? {
                if vals[i].is_some() {
                    return Err(invalid(format!(
                        "got multiple values for argument {name:?}"
                    )));
                }
                vals[i] = Some(v);
            }
        }
        kwargs.assert_all_used()?;
        let [ensure_ascii, indent, separators, sort_keys] = vals;
        let indent = match indent.filter(|v| !v.is_none()) {
            None => None,
            Some(v) if v.kind() == ValueKind::String => Some(v.to_string()),
            Some(v) => {
                let n = i64::try_from(v).map_err(|_| invalid("indent must be an int or str"))?;
                Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
            }
        };
        let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
            None if indent.is_some() => (",".to_string(), ": ".to_string()),
            None => (", ".to_string(), ": ".to_string()),
            Some(v) => {
                let parts: Vec<String> = v
                    .try_iter()
                    .map_err(|_| invalid("separators must be a pair of strings"))?
                    .map(|s| s.to_string())
                    .collect();
                match <[String; 2]>::try_from(parts) {
                    Ok([item, key]) => (item, key),
                    Err(_) => return Err(invalid("separators must be a pair of strings")),
                }
            }
        };
        Ok(Self {
            ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
            indent,
            item_sep,
            key_sep,
            sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        })
    }
}

/// The filter: `value | tojson(ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`.
pub(super) fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let opts = Options::parse(&args, &kwargs)?;
    let mut out = String::new();
    write_value(&mut out, value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_value(out: &mut String, v: &Value, opts: &Options, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(invalid("circular reference detected"));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v)?,
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_seq(out, &items, opts, depth)?;
        }
        ValueKind::Map => write_map(out, v, opts, depth)?,
        other => {
            return Err(invalid(format!(
                "object of type {other} is not JSON serializable"
            )));
        }
    }
    Ok(())
}

/// The newline and indentation before an item at `depth` (None: compact).
fn newline(out: &mut String, opts: &Options, depth: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], opts: &Options, depth: usize) -> Result<(), Error> {
    if items.is_empty() {
        out.push_str("[]");
        return Ok(());
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        newline(out, opts, depth + 1);
        write_value(out, item, opts, depth + 1)?;
    }
    newline(out, opts, depth);
    out.push(']');
    Ok(())
}

/// A dict key as Python's json converts it: str as is, bool/None/numbers
/// to their JSON spelling.
fn key_string(k: &Value) -> Result<String, Error> {
    match k.kind() {
        ValueKind::String => Ok(k.as_str().unwrap_or_default().to_string()),
        ValueKind::Bool | ValueKind::None | ValueKind::Number => {
            let mut s = String::new();
            write_value(&mut s, k, &PLAIN, 0)?;
            Ok(s)
        }
        other => Err(invalid(format!(
            "keys must be str, int, float, bool or None, not {other}"
        ))),
    }
}

const PLAIN: Options = Options {
    ensure_ascii: false,
    indent: None,
    item_sep: String::new(),
    key_sep: String::new(),
    sort_keys: false,
};

fn write_map(out: &mut String, v: &Value, opts: &Options, depth: usize) -> Result<(), Error> {
    let mut entries = Vec::new();
    for k in v.try_iter()? {
        let val = v.get_item(&k)?;
        entries.push((key_string(&k)?, val));
    }
    if opts.sort_keys {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    if entries.is_empty() {
        out.push_str("{}");
        return Ok(());
    }
    out.push('{');
    for (i, (k, val)) in entries.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        newline(out, opts, depth + 1);
        write_str(out, k, opts.ensure_ascii);
        out.push_str(&opts.key_sep);
        write_value(out, val, opts, depth + 1)?;
    }
    newline(out, opts, depth);
    out.push('}');
    Ok(())
}

fn write_number(out: &mut String, v: &Value) -> Result<(), Error> {
    if v.is_integer() {
        out.push_str(&v.to_string());
        return Ok(());
    }
    let f = f64::try_from(v.clone())?;
    out.push_str(&py_float_repr(f));
    Ok(())
}

/// Python's `repr(float)` (what `json.dumps` writes): shortest round-trip
/// digits, positional for exponents in [-4, 16), else `d.ddde+XX`.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            let (int, frac) = digits.split_at(point as usize);
            let _ = write!(out, "{int}.{frac}");
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            let _ = write!(out, ".{rest}");
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// A JSON string literal as Python's json module writes it.
fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::py_float_repr;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (123456.789, "123456.789"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.25e100, "1.25e+100"),
            (f64::INFINITY, "Infinity"),
            (f64::NAN, "NaN"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }
}
