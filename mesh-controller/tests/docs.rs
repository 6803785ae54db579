//! The object examples in the user documentation, `examples/local/` and `examples/quickstart/`
//! are real: each YAML block with an `apiVersion` must load as local-mode objects, exactly as
//! the controller reads them.

use std::path::Path;

use mesh_controller::local::parse_file;

#[test]
fn docs_and_example_objects_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for doc in ["docs/local-mode.md", "docs/controller.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for block in text.split("```yaml\n").skip(1) {
            let yaml = block.split("```").next().unwrap();
            if !yaml.contains("apiVersion:") {
                continue;
            }
            if let Err(e) = parse_file(yaml, "cluster.local") {
                panic!("example in {doc} is invalid: {e}\n{yaml}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "expected the object examples, found {checked}"
    );
    let mut files = 0;
    for dir in ["examples/local", "examples/quickstart"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let objs = parse_file(&text, "cluster.local")
                .unwrap_or_else(|e| panic!("{} is invalid: {e}", path.display()));
            assert!(!objs.is_empty(), "{} holds no objects", path.display());
            files += 1;
        }
    }
    assert!(files >= 5);
}
