//! docs/inject.md is true: its annotation table lists exactly the annotations the injector
//! reads, and every YAML example in it injects cleanly in both modes.

use std::path::Path;

use mesh_inject::{annotations::USER_ANNOTATIONS, inject, uninject, Context, Doc, Mode, Outcome};

fn page() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/inject.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```yaml") => cur = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_annotation_table_is_complete() {
    let text = page();
    let table: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `mesh.dev/"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let mut documented: Vec<String> = table.iter().map(|a| format!("mesh.dev/{a}")).collect();
    documented.sort();
    let mut known: Vec<String> = USER_ANNOTATIONS.iter().map(|a| a.to_string()).collect();
    known.sort();
    assert_eq!(documented, known, "docs/inject.md's annotation table");
}

#[test]
fn the_examples_inject() {
    let blocks = yaml_blocks(&page());
    assert!(blocks.len() >= 2, "docs/inject.md has no YAML examples");
    for block in blocks {
        let doc: Doc = serde_yaml_ng::from_str(&block).unwrap();
        for mode in [Mode::Annotate, Mode::Manual] {
            let mut d = doc.clone();
            let reports = inject(&mut d, &Context::default(), mode)
                .unwrap_or_else(|e| panic!("{e} in\n{block}"));
            for r in &reports {
                assert!(
                    !matches!(r.outcome, Outcome::Skipped(_)) || r.kind == "Namespace",
                    "{r} in\n{block}"
                );
            }
            uninject(&mut d).unwrap();
        }
    }
}
