//! The YAML examples in the user documentation are real: each `services:` block in docs/*.md
//! must load and validate as a static discovery file.

use std::path::Path;

#[test]
fn docs_examples_are_valid() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for block in text.split("```yaml\n").skip(1) {
            let yaml = block.split("```").next().unwrap();
            if !yaml.starts_with("services:") {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("example.yaml");
            std::fs::write(&file, yaml).unwrap();
            if let Err(e) = mesh_proxy::discovery::static_file::load(&file) {
                panic!("example in {} is invalid: {e:#}\n{yaml}", path.display());
            }
            checked += 1;
        }
    }
    // The demo's file too.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/standalone/mesh.yaml");
    mesh_proxy::discovery::static_file::load(&demo).unwrap();
    assert!(
        checked >= 2,
        "expected the static-config examples, found {checked}"
    );
}
