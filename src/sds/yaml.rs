//! A small YAML writer for JSON values (block style), so generated Envoy
//! bootstraps are readable. Strings are always double-quoted with JSON
//! escapes — a valid YAML double-quoted scalar — so no value can change
//! meaning (`on`, `0s`, `*`, `: `, …). Keys are plain when they are simple; maps keep their order.

use serde_json::Value;

/// `value` as a YAML document.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => write_seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key(k));
        out.push(':');
        write_value(v, indent, out);
    }
}

fn write_seq(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first key on the dash line, the rest aligned under it.
                let mut inner = String::new();
                write_map(m, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(inner.trim_start());
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(items, indent + 2, out);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// After `key:` — a scalar on the same line, a collection below it.
fn write_value(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(a, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@' | '/'))
        && !k.starts_with(['-', '@']);
    if plain { k.to_string() } else { Value::String(k.to_string()).to_string() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn writes_block_yaml_with_quoted_strings() {
        let v = json!({
            "a": {"b": 1, "c": "0s", "d": true, "e": {}, "f": []},
            "list": [{"x": "y", "z": [1, 2]}, "s", [3]],
            "@type": "t: with colon",
        });
        let want = "\
a:
  b: 1
  c: \"0s\"
  d: true
  e: {}
  f: []
list:
  - x: \"y\"
    z:
      - 1
      - 2
  - \"s\"
  -
    - 3
\"@type\": \"t: with colon\"
";
        assert_eq!(to_yaml(&v), want);
    }
}
