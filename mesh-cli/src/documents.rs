//! Splitting an input into documents (YAML streams separated by `---`, or concatenated JSON
//! objects), each with its number and first line for error messages, checking that each is
//! a Kubernetes object, and writing documents back out as YAML or JSON.

use mesh_inject::Doc;
use serde_yaml_ng::Value;

use crate::args::Format;
use crate::error::Problem;
use crate::input::Source;

/// One document of an input.
#[derive(Debug, Clone)]
pub struct Document {
    /// The input's name (`stdin` or the path).
    pub source: String,
    /// 1-based number among the input's non-empty documents.
    pub number: usize,
    /// 1-based line where the document's content starts.
    pub line: usize,
    pub value: Doc,
}

impl Document {
    /// A problem with this document.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem::document(&self.source, self.number, self.line, message)
    }
}

/// The documents of one input, or the problems that keep it from parsing. Empty documents
/// (nothing but comments or blank lines) are dropped.
pub fn parse(source: &Source) -> Result<Vec<Document>, Vec<Problem>> {
    let sniffed_json = source.text.trim_start().starts_with(['{', '[']);
    if source.json_by_name {
        return parse_json(source);
    }
    if sniffed_json {
        if let Ok(docs) = parse_json(source) {
            return Ok(docs);
        }
    }
    parse_yaml(source)
}

fn parse_json(source: &Source) -> Result<Vec<Document>, Vec<Problem>> {
    let text = &source.text;
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut offset = 0;
    loop {
        let start = offset + (text[offset..].len() - text[offset..].trim_start().len());
        let number = docs.len() + 1;
        match stream.next() {
            None => break,
            Some(Ok(value)) => {
                docs.push(Document {
                    source: source.name.clone(),
                    number,
                    line: line_of(text, start),
                    value,
                });
                offset = stream.byte_offset();
            }
            Some(Err(e)) => {
                return Err(vec![Problem::document(
                    &source.name,
                    number,
                    e.line().max(1),
                    format!(
                        "is not valid JSON: {e}; fix the syntax there (JSON input holds one or \
                         more objects, one after the other)"
                    ),
                )])
            }
        }
    }
    Ok(docs)
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// Whether a line is a YAML document marker (`---`, `--- rest`, or `...`); the content after
/// `--- ` on the same line belongs to the next document.
fn marker(line: &str) -> Option<&str> {
    let line = line.trim_end_matches('\r');
    if line == "..." || line.starts_with("... ") {
        return Some("");
    }
    if line == "---" {
        return Some("");
    }
    line.strip_prefix("--- ")
        .or_else(|| line.strip_prefix("---\t"))
}

/// A chunk of a YAML stream: its text (with the lines before it blanked, so the parser's
/// line numbers are the input's) and its first content line.
struct Chunk {
    text: String,
    first_line: Option<usize>,
}

fn split_yaml(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut current = Chunk {
        text: String::new(),
        first_line: None,
    };
    for (i, line) in text.split('\n').enumerate() {
        let number = i + 1;
        let content = match marker(line) {
            Some(rest) => {
                chunks.push(std::mem::replace(
                    &mut current,
                    Chunk {
                        text: "\n".repeat(i),
                        first_line: None,
                    },
                ));
                // Keep the column of what follows the marker, for the parser's messages.
                format!("{}{rest}", " ".repeat(line.len() - rest.len()))
            }
            None => line.to_string(),
        };
        let trimmed = content.trim();
        if current.first_line.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
            current.first_line = Some(number);
        }
        current.text.push_str(&content);
        current.text.push('\n');
    }
    chunks.push(current);
    chunks
}

fn parse_yaml(source: &Source) -> Result<Vec<Document>, Vec<Problem>> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    let mut number = 0;
    for chunk in split_yaml(&source.text) {
        let Some(first_line) = chunk.first_line else {
            continue;
        };
        number += 1;
        match serde_yaml_ng::from_str::<Value>(&chunk.text) {
            Ok(Value::Null) => number -= 1,
            Ok(value) => docs.push(Document {
                source: source.name.clone(),
                number,
                line: first_line,
                value,
            }),
            Err(e) => {
                let line = e.location().map(|l| l.line()).unwrap_or(first_line);
                problems.push(Problem::document(
                    &source.name,
                    number,
                    line.max(first_line),
                    format!(
                        "is not valid YAML: {e}; fix the syntax there (check the indentation \
                         and quote values with ':' or '#')"
                    ),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(problems)
    }
}

/// Checks that a document is a Kubernetes object (a mapping with string `apiVersion` and
/// `kind`; for `*List` kinds, every item too). The message names the field and what to do.
pub fn check_object(value: &Value) -> Result<(), String> {
    check_at(value, "")
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn check_at(value: &Value, path: &str) -> Result<(), String> {
    let Some(map) = value.as_mapping() else {
        let what = if path.is_empty() {
            String::new()
        } else {
            format!("{} ", path.trim_end_matches('.'))
        };
        let hint = if matches!(value, Value::Sequence(_)) {
            "; put several objects in separate documents (---) or under items: of a kind: List"
        } else {
            ""
        };
        return Err(format!(
            "{what}is {}, not an object; a Kubernetes object is a mapping with apiVersion, \
             kind and metadata{hint}",
            describe(value)
        ));
    };
    for field in ["apiVersion", "kind"] {
        match map.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(other) => {
                return Err(format!(
                    "{path}{field} is {}, not a name; write e.g. {}",
                    describe(other),
                    example(field)
                ))
            }
            None => {
                return Err(format!(
                    "{path}{field} is missing; every Kubernetes object has one, e.g. {}",
                    example(field)
                ))
            }
        }
    }
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.ends_with("List") {
        if let Some(items) = map.get("items") {
            let Some(items) = items.as_sequence() else {
                return Err(format!(
                    "{path}items is {}, not a list; a {kind} holds its objects in a list under items",
                    describe(items)
                ));
            };
            for (i, item) in items.iter().enumerate() {
                check_at(item, &format!("{path}items[{i}]."))?;
            }
        }
    }
    Ok(())
}

fn example(field: &str) -> &'static str {
    if field == "kind" {
        "kind: Deployment"
    } else {
        "apiVersion: apps/v1"
    }
}

/// Renders documents in the output format: YAML documents separated by `---`, or one
/// indented JSON object per document.
pub fn render(docs: &[Document], format: Format) -> Result<String, Problem> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        match format {
            Format::Yaml => {
                if i > 0 {
                    out.push_str("---\n");
                }
                let yaml = serde_yaml_ng::to_string(&doc.value)
                    .map_err(|e| doc.problem(format!("cannot be written as YAML: {e}")))?;
                out.push_str(&yaml);
            }
            Format::Json => {
                let json = serde_json::to_string_pretty(&doc.value).map_err(|e| {
                    doc.problem(format!(
                        "cannot be written as JSON: {e}; JSON keys are strings (quote the keys), \
                         or write it with -o yaml"
                    ))
                })?;
                out.push_str(&json);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source {
            name: "t.yaml".into(),
            json_by_name: false,
            text: text.into(),
        }
    }

    #[test]
    fn yaml_streams_split_on_markers_and_keep_lines() {
        let docs = parse(&source(
            "# head\n---\na: 1\n---\n\n# only a comment\n---   \n--- {b: 2}\n...\nc: 3\n",
        ))
        .unwrap();
        let got: Vec<_> = docs.iter().map(|d| (d.number, d.line)).collect();
        // Comment-only documents and the empty rest of "---   " are not documents.
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert_eq!(got[0], (1, 3));
        assert_eq!(docs[1].value["b"].as_i64(), Some(2));
        assert_eq!(docs[2].value["c"].as_i64(), Some(3));
        assert_eq!(docs[2].line, 10);
    }

    #[test]
    fn yaml_errors_carry_the_input_line() {
        let e = parse(&source("a: 1\n---\nb: [1,\nc: 2\n")).unwrap_err();
        assert_eq!(e[0].document.unwrap().0, 2);
        assert!(e[0].document.unwrap().1 >= 3, "{:?}", e[0]);
    }

    #[test]
    fn json_streams_keep_key_order() {
        let docs = parse(&source("{\"z\": 1, \"a\": 2}\n\n{\"b\": 3}")).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].line, 3);
        let keys: Vec<_> = docs[0]
            .value
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(keys, ["z", "a"]);
        // A YAML flow mapping is not JSON: it is read as YAML.
        assert_eq!(
            parse(&source("{a: 1}")).unwrap()[0].value["a"].as_i64(),
            Some(1)
        );
    }

    #[test]
    fn objects_need_api_version_and_kind() {
        let v: Value =
            serde_yaml_ng::from_str("kind: List\napiVersion: v1\nitems: [{kind: Pod}]").unwrap();
        assert!(check_object(&v)
            .unwrap_err()
            .starts_with("items[0].apiVersion is missing"));
        let v: Value = serde_yaml_ng::from_str("- a").unwrap();
        assert!(check_object(&v).unwrap_err().contains("is a list"));
    }
}
