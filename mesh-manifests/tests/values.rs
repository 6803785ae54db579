//! Values errors as `meshctl install` shows them: an unknown key names the nearest valid
//! one, a wrong type names the type expected, a values file that is not YAML (or not a
//! mapping) names the file and line; and the stored values of an installed mesh read back.

use mesh_manifests::values::KEYS;
use mesh_manifests::{Values, ValuesError};
use serde_json::json;

#[test]
fn unknown_keys_name_the_nearest_valid_one() {
    let mut v = Values::defaults();
    for (set, want) in [
        (
            "controler.replicas=3",
            "unknown value controler.replicas (did you mean controller.replicas?)",
        ),
        (
            "proxy.nativesidecar=false",
            "unknown value proxy.nativesidecar (did you mean proxy.nativeSidecar?)",
        ),
        (
            "webhook.failurepolicy=Fail",
            "unknown value webhook.failurepolicy (did you mean webhook.failurePolicy?)",
        ),
        (
            "gatewayApi.installCRDs=false",
            "unknown value gatewayApi.installCRDs (did you mean gatewayAPI.installCRDs?)",
        ),
    ] {
        let e = v.set(set).unwrap_err();
        assert!(matches!(e, ValuesError::Unknown { .. }));
        assert_eq!(e.to_string(), want);
    }
    assert_eq!(v, Values::defaults(), "a refused --set changed the values");
}

#[test]
fn wrong_types_name_the_expected_type() {
    let mut v = Values::defaults();
    for (set, want) in [
        ("controller.replicas=two", "value controller.replicas: expected an integer from 1 to 100, got the string \"two\""),
        ("controller.replicas=0", "value controller.replicas: expected an integer from 1 to 100, got the number 0"),
        ("proxy.nativeSidecar=yes", "value proxy.nativeSidecar: expected true or false, got the string \"yes\""),
        ("controller.logLevel=true", "value controller.logLevel: expected a string, got the boolean true"),
        ("namespace=Mesh_System", "value namespace: expected a DNS label (lower-case letters, digits and '-', at most 63), got \"Mesh_System\""),
        ("identity.leafLifetime=forever", "value identity.leafLifetime: expected a duration such as 24h, 90m or 30s, got \"forever\""),
    ] {
        let e = v.set(set).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
    let e = v
        .merge_yaml("controller:\n  nodeSelector: [a]\n", "f.yaml")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "f.yaml: value controller.nodeSelector: expected a mapping of names to strings, got a list"
    );
    let e = v
        .merge_yaml("controller:\n  nodeSelector: {ssd: true}\n", "f.yaml")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "f.yaml: value controller.nodeSelector.ssd: expected a string (quote it in YAML, or use --set-string), got the boolean true"
    );
}

#[test]
fn values_files_that_are_not_yaml_name_file_and_line() {
    let mut v = Values::defaults();
    let e = v
        .merge_yaml(
            "controller:\n  replicas: 3\n   logLevel: debug\n",
            "values.yaml",
        )
        .unwrap_err();
    assert!(matches!(e, ValuesError::Syntax { .. }));
    assert!(
        e.to_string().starts_with("values.yaml: line 3, column "),
        "{e}"
    );
    assert!(e.to_string().contains("not valid YAML"), "{e}");
    let e = v.merge_yaml("just text\n", "values.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "values.yaml: line 1: expected a mapping of values (key: value lines), found a string"
    );
    let e = v
        .merge_yaml("controller:\n  replica: 3\n", "prod.yaml")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "prod.yaml: unknown value controller.replica (did you mean controller.replicas?)"
    );
    // Empty files change nothing.
    v.merge_yaml("", "empty.yaml").unwrap();
    v.merge_yaml("# only a comment\n", "empty.yaml").unwrap();
    assert_eq!(v, Values::defaults());
}

#[test]
fn files_and_sets_layer_like_helm() {
    let mut v = Values::defaults();
    v.merge_yaml(
        "controller:\n  replicas: 3\n  tolerations: [{key: k, operator: Exists}]\n  podAnnotations: {a: '1'}\n",
        "a.yaml",
    )
    .unwrap();
    v.merge_yaml("controller:\n  podAnnotations: {b: '2'}\n", "b.yaml")
        .unwrap();
    v.set("controller.replicas=4,controller.podAnnotations.a=null")
        .unwrap();
    assert_eq!(v.get("controller.replicas"), Some(&json!(4)));
    assert_eq!(v.get("controller.podAnnotations"), Some(&json!({"b": "2"})));
    assert_eq!(
        v.get("controller.tolerations"),
        Some(&json!([{"key": "k", "operator": "Exists"}]))
    );
    v.set_string("certificates.trustAnchorsPEM", "PEM, with commas\n")
        .unwrap();
    assert_eq!(
        v.get("certificates.trustAnchorsPEM"),
        Some(&json!("PEM, with commas\n"))
    );
}

#[test]
fn installed_values_read_back_and_unknown_keys_are_dropped() {
    let mut v = Values::defaults();
    v.set("controller.replicas=5,proxy.logLevel=debug").unwrap();
    let stored = serde_yaml_ng::to_string(&v.without_certificates()).unwrap();
    let stored = format!("{stored}retired:\n  flag: true\n");
    let (back, dropped) = Values::from_installed(&stored).unwrap();
    assert_eq!(dropped, ["retired"]);
    assert_eq!(back, v);
    let e = Values::from_installed("controller: [").unwrap_err();
    assert!(e.to_string().contains("ConfigMap mesh-config"), "{e}");
}

/// Every default passes its own key's checks: the defaults merged as a values file change
/// nothing.
#[test]
fn every_key_has_help_and_a_valid_default() {
    assert!(KEYS.iter().all(|k| !k.help.is_empty()));
    let text = serde_yaml_ng::to_string(&Values::defaults().to_json()).unwrap();
    let mut v = Values::defaults();
    v.merge_yaml(&text, "defaults").unwrap();
    assert_eq!(v, Values::defaults());
}
