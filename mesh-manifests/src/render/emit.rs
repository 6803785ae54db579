//! A small block-style YAML writer for the rendered objects: stable output, PEMs and long
//! descriptions as literal blocks, comments beside RBAC rules, and, in template mode, the
//! placeholders of [`super::Template`] written as Helm expressions.
//!
//! Strings are written plain only when every YAML 1.1 and 1.2 reader (kubectl, Helm, serde)
//! reads them back as the same string; otherwise as a literal block or a double-quoted JSON
//! string (JSON strings are valid YAML).

use serde_json::{Map, Value};

use super::{rbac, Expr, Template, Ty, KEY_MARK, MARK};

/// Writes one object (a mapping) at the top level.
pub(crate) fn document(obj: &Value, template: Option<&Template>, out: &mut String) {
    let w = Writer {
        template,
        rbac: obj
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "Role" || k == "ClusterRole"),
    };
    match obj {
        Value::Object(map) if !map.is_empty() => w.map(map, 0, false, true, out),
        other => {
            out.push_str(&w.scalar(other, 0));
            out.push('\n');
        }
    }
}

/// A plain YAML scalar for a string key or value with no template involved (values.yaml).
pub(crate) fn plain_scalar(v: &Value, indent: usize) -> String {
    Writer {
        template: None,
        rbac: false,
    }
    .scalar(v, indent)
}

struct Writer<'a> {
    template: Option<&'a Template>,
    /// The object is a Role or ClusterRole: its top-level `rules` get comments.
    rbac: bool,
}

fn pad(n: usize) -> String {
    " ".repeat(n)
}

impl Writer<'_> {
    /// Writes `map` at `indent`. With `inline_first`, the first entry continues a line
    /// already holding `- `.
    fn map(
        &self,
        map: &Map<String, Value>,
        indent: usize,
        inline_first: bool,
        top: bool,
        out: &mut String,
    ) {
        for (i, (raw_key, value)) in map.iter().enumerate() {
            let (cond, key) = self.split_key(raw_key);
            if let Some(cond) = &cond {
                if i == 0 && inline_first {
                    // Cannot open a condition after "- ": start the item on its own line.
                    out.push('\n');
                }
                out.push_str(&format!("{}{{{{- if {cond} }}}}\n", pad(indent)));
            }
            if i > 0 || !inline_first || cond.is_some() {
                out.push_str(&pad(indent));
            }
            out.push_str(&self.scalar(&Value::String(key.to_string()), indent));
            out.push(':');
            let comments = top && self.rbac && key == "rules";
            self.value_after_key(value, indent, comments, out);
            if cond.is_some() {
                out.push_str(&format!("{}{{{{- end }}}}\n", pad(indent)));
            }
        }
    }

    /// The part after `key:`.
    fn value_after_key(&self, value: &Value, indent: usize, comments: bool, out: &mut String) {
        match value {
            Value::Object(m) if m.is_empty() => out.push_str(" {}\n"),
            Value::Array(a) if a.is_empty() => out.push_str(" []\n"),
            Value::Object(m) => {
                out.push('\n');
                self.map(m, indent + 2, false, false, out);
            }
            Value::Array(a) => {
                out.push('\n');
                self.list(a, indent + 2, comments, out);
            }
            Value::String(s) if self.yaml_placeholder(s).is_some() => {
                let e = self.yaml_placeholder(s).map(|e| e.expr).unwrap_or_default();
                out.push_str(&format!(
                    " {{{{- toYaml {e} | nindent {} }}}}\n",
                    indent + 2
                ));
            }
            scalar => {
                out.push(' ');
                out.push_str(&self.scalar(scalar, indent + 2));
                out.push('\n');
            }
        }
    }

    fn list(&self, items: &[Value], indent: usize, comments: bool, out: &mut String) {
        for item in items {
            if comments {
                if let Some(why) = rbac::rule_comment(item) {
                    for line in wrap(why, 96usize.saturating_sub(indent)) {
                        out.push_str(&format!("{}# {line}\n", pad(indent)));
                    }
                }
            }
            out.push_str(&pad(indent));
            out.push('-');
            match item {
                Value::Object(m) if !m.is_empty() => {
                    out.push(' ');
                    self.map(m, indent + 2, true, false, out);
                }
                Value::Array(a) if !a.is_empty() => {
                    out.push('\n');
                    self.list(a, indent + 2, false, out);
                }
                Value::String(s) if self.yaml_placeholder(s).is_some() => {
                    let e = self.yaml_placeholder(s).map(|e| e.expr).unwrap_or_default();
                    out.push_str(&format!(
                        " {{{{- toYaml {e} | nindent {} }}}}\n",
                        indent + 2
                    ));
                }
                scalar => {
                    out.push(' ');
                    out.push_str(&self.scalar(scalar, indent + 2));
                    out.push('\n');
                }
            }
        }
    }

    /// A key's condition (template mode) and the key itself.
    fn split_key<'k>(&self, key: &'k str) -> (Option<String>, &'k str) {
        if let (Some(t), Some(rest)) = (self.template, key.strip_prefix(KEY_MARK)) {
            if let Some((n, name)) = rest.split_once(KEY_MARK) {
                let cond = n
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| t.conds.borrow().get(n).cloned());
                if let Some(cond) = cond {
                    return (Some(cond), name);
                }
            }
        }
        (None, key)
    }

    /// The expression `s` is, when it is exactly one placeholder.
    fn placeholder(&self, s: &str) -> Option<Expr> {
        let t = self.template?;
        let n = s.strip_prefix(MARK)?.strip_suffix(MARK)?;
        let n: usize = n.parse().ok()?;
        t.exprs.borrow().get(n).cloned()
    }

    fn yaml_placeholder(&self, s: &str) -> Option<Expr> {
        self.placeholder(s).filter(|e| e.ty == Ty::Yaml)
    }

    /// A scalar; multi-line strings become literal blocks indented at `indent`.
    fn scalar(&self, v: &Value, indent: usize) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => self.string(s, indent),
            // Not reached for objects: maps and lists are written as blocks.
            other => other.to_string(),
        }
    }

    fn string(&self, s: &str, indent: usize) -> String {
        if self.template.is_some() {
            if let Some(e) = self.placeholder(s) {
                return match e.ty {
                    Ty::Str => format!("{{{{ {} | quote }}}}", e.expr),
                    Ty::Int => format!("{{{{ {} | int }}}}", e.expr),
                    Ty::Yaml => format!("{{{{ {} | toJson }}}}", e.expr),
                };
            }
            if s.contains(MARK) {
                return self.printf(s);
            }
            if s.contains("{{") {
                // Literal text that Helm would read as a template action.
                return format!("{{{{ {} | quote }}}}", json_string(s));
            }
        }
        if is_plain_safe(s) {
            return s.to_string();
        }
        if let Some(block) = literal_block(s, indent) {
            return block;
        }
        json_string(s)
    }

    /// A string with placeholders inside literal text: `printf` with `%v` for each.
    fn printf(&self, s: &str) -> String {
        let mut format = String::new();
        let mut args = Vec::new();
        let mut parts = s.split(MARK);
        // Parts alternate: literal, placeholder index, literal, ...
        let mut literal = true;
        for part in parts.by_ref() {
            if literal {
                format.push_str(&part.replace('%', "%%"));
            } else {
                let expr = part
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| self.template?.exprs.borrow().get(n).cloned());
                match expr {
                    Some(e) => {
                        format.push_str("%v");
                        args.push(format!("({})", e.expr));
                    }
                    None => format.push_str(part),
                }
            }
            literal = !literal;
        }
        format!(
            "{{{{ printf {} {} | quote }}}}",
            json_string(&format),
            args.join(" ")
        )
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Whether `s` can be written without quotes and read back as the same string by YAML 1.1
/// (Go's yaml.v2, used by kubectl and Helm) and 1.2 readers alike.
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/') {
        return false;
    }
    let specials = [
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~",
    ];
    if specials.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || " ._/:@=-".contains(c))
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
}

/// A literal block (`|`, `|-`, `|+`) for a multi-line string, when one can hold it exactly.
fn literal_block(s: &str, indent: usize) -> Option<String> {
    if !s.contains('\n')
        || s.starts_with([' ', '\n'])
        || s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
        || s.contains('\u{feff}')
    {
        return None;
    }
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let chomp = match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    };
    // Lines that are only spaces would be taken as indentation.
    if body.lines().any(|l| !l.is_empty() && l.trim().is_empty()) {
        return None;
    }
    let mut out = chomp.to_string();
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad(indent));
            out.push_str(line);
        }
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(out)
}

/// Word-wraps `text` into lines of at most `width` characters (long words stay whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(v: &Value) {
        let mut out = String::new();
        document(v, None, &mut out);
        let back: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(&back, v, "{out}");
    }

    #[test]
    fn strings_read_back_exactly() {
        roundtrip(&json!({
            "plain": "mesh-system",
            "yes": "yes",
            "num": "0.1.0",
            "colon": "a: b",
            "hash": "a #b",
            "pem": "-----BEGIN X-----\nabc\n-----END X-----\n",
            "nochomp": "a\nb",
            "keep": "a\n\n",
            "lead": " a\nb",
            "spaces": "a\n  \nb",
            "empty": "",
            "tab": "a\tb",
            "unicode": "é \u{1}",
            "list": [{"a": 1, "b": [1, 2]}, [], {}, "x", ["y"]],
            "nested": {"x": {"y": null, "z": true}},
        }));
    }

    #[test]
    fn wraps_words() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
    }
}
