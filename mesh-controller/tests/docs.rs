//! The object examples in the user documentation, `examples/local/` and `examples/quickstart/`
//! are real: each YAML block with an `apiVersion` must load as local-mode objects, exactly as
//! the controller reads them, and authorization and egress policies must also compile (the
//! controller would otherwise report them as not accepted).

use std::path::Path;

use mesh_controller::inbound::authorization::{compile_authorization, compile_egress, Defaults};
use mesh_controller::local::parse_file;
use mesh_controller::objects::Object;

/// Loads a file's objects and checks what the index would check.
fn load(text: &str) -> Result<Vec<Object>, String> {
    let objs = parse_file(text, "cluster.local")?;
    for o in &objs {
        match o {
            Object::AuthorizationPolicy(p) => {
                compile_authorization(p, "cluster.local")?;
            }
            Object::EgressPolicy(p) => {
                compile_egress(p)?;
            }
            Object::Namespace(n) => {
                let d = Defaults::from_annotations(&n.annotations);
                if !d.problems.is_empty() {
                    return Err(d.problems.join("; "));
                }
            }
            _ => {}
        }
    }
    Ok(objs)
}

#[test]
fn docs_and_example_objects_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for doc in [
        "docs/local-mode.md",
        "docs/controller.md",
        "docs/authorization.md",
        "docs/adoption.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for block in text.split("```yaml\n").skip(1) {
            let yaml = block.split("```").next().unwrap();
            if !yaml.contains("apiVersion:") {
                continue;
            }
            if let Err(e) = load(yaml) {
                panic!("example in {doc} is invalid: {e}\n{yaml}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 16,
        "expected the object examples, found {checked}"
    );
    let mut files = 0;
    for dir in ["examples/local", "examples/quickstart"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let objs = load(&text).unwrap_or_else(|e| panic!("{} is invalid: {e}", path.display()));
            assert!(!objs.is_empty(), "{} holds no objects", path.display());
            files += 1;
        }
    }
    assert!(files >= 5);
}
