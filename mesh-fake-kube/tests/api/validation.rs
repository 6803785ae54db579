//! What the server refuses as a real API server does, through kube-rs: endpoint addresses in
//! the loopback and link-local ranges, names that are not DNS names, and custom resources
//! that break their CRD's schema (on create, update, patch, apply and dry run), with the
//! real 422 `Invalid` Status; and that valid objects pass and unknown fields are pruned.

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::core::Status;
use kube::Client;
use serde_json::{json, Value};

use crate::common::setup;

/// The Status of a refused request (panics on success or other errors).
fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The 422 and its causes as (reason, field, message).
fn invalid<T: std::fmt::Debug>(
    result: Result<T, kube::Error>,
) -> (String, Vec<(String, String, String)>) {
    let status = refused(result);
    assert_eq!(status.code, 422, "{status:?}");
    assert_eq!(status.reason, "Invalid", "{status:?}");
    let causes = status
        .details
        .map(|d| {
            d.causes
                .into_iter()
                .map(|c| (c.reason, c.field, c.message))
                .collect()
        })
        .unwrap_or_default();
    (status.message, causes)
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn slice(name: &str, address_type: &str, addresses: &[&str]) -> EndpointSlice {
    typed(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "endpoints": [{"addresses": addresses, "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
}

#[tokio::test]
async fn endpoint_slices_refuse_special_addresses() {
    let (_server, client) = setup().await;
    let api: Api<EndpointSlice> = Api::default_namespaced(client);
    let pp = PostParams::default();

    let (message, causes) = invalid(
        api.create(&pp, &slice("web-abc", "IPv4", &["127.0.0.1"]))
            .await,
    );
    assert_eq!(
        message,
        "EndpointSlice.discovery.k8s.io \"web-abc\" is invalid: endpoints[0].addresses[0]: \
         Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
    );
    assert_eq!(
        causes,
        [(
            "FieldValueInvalid".to_string(),
            "endpoints[0].addresses[0]".to_string(),
            "Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
                .to_string()
        )]
    );
    let status = refused(
        api.create(&pp, &slice("web-abc", "IPv4", &["127.0.0.1"]))
            .await,
    );
    let details = status.details.expect("details");
    assert_eq!(
        (
            details.name.as_str(),
            details.group.as_str(),
            details.kind.as_str()
        ),
        ("web-abc", "discovery.k8s.io", "EndpointSlice")
    );

    let (message, causes) = invalid(
        api.create(
            &pp,
            &slice(
                "web-abc",
                "IPv4",
                &["0.0.0.0", "169.254.169.254", "224.0.0.1"],
            ),
        )
        .await,
    );
    assert!(message.starts_with("EndpointSlice.discovery.k8s.io \"web-abc\" is invalid: ["));
    let details: Vec<&str> = causes.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(
        details,
        [
            "Invalid value: \"0.0.0.0\": may not be unspecified (0.0.0.0)",
            "Invalid value: \"169.254.169.254\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
            "Invalid value: \"224.0.0.1\": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ]
    );
    let (_, causes) = invalid(
        api.create(
            &pp,
            &slice("web-v6", "IPv6", &["::1", "fe80::1", "10.0.0.1"]),
        )
        .await,
    );
    let details: Vec<&str> = causes.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(
        details,
        [
            "Invalid value: \"::1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
            "Invalid value: \"fe80::1\": may not be in the link-local range (169.254.0.0/16, fe80::/10)",
            "Invalid value: \"10.0.0.1\": must be a valid IPv6 address",
        ]
    );

    // Valid addresses pass; FQDN addresses are not checked as IPs.
    api.create(&pp, &slice("web-abc", "IPv4", &["10.0.0.1", "10.0.0.2"]))
        .await
        .unwrap();
    api.create(&pp, &slice("web-v6", "IPv6", &["fd00::1"]))
        .await
        .unwrap();
    api.create(&pp, &slice("web-dns", "FQDN", &["db.example.com"]))
        .await
        .unwrap();

    // An update, a patch, an apply and a dry run that bring in a loopback address fail too,
    // and change nothing.
    let mut current = api.get("web-abc").await.unwrap();
    current.endpoints[0].addresses = vec!["127.0.0.1".into()];
    invalid(api.replace("web-abc", &pp, &current).await);
    let to_loopback =
        json!({"endpoints": [{"addresses": ["127.0.0.5"], "conditions": {"ready": true}}]});
    invalid(
        api.patch(
            "web-abc",
            &PatchParams::default(),
            &Patch::Merge(&to_loopback),
        )
        .await,
    );
    let mut applied = slice("web-abc", "IPv4", &["169.254.0.1"]);
    applied.metadata.labels = None;
    invalid(
        api.patch(
            "web-abc",
            &PatchParams::apply("test"),
            &Patch::Apply(&applied),
        )
        .await,
    );
    invalid(
        api.patch(
            "web-new",
            &PatchParams::apply("test"),
            &Patch::Apply(&slice("web-new", "IPv4", &["127.0.0.1"])),
        )
        .await,
    );
    invalid(
        api.create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &slice("web-dry", "IPv4", &["127.0.0.1"]),
        )
        .await,
    );
    assert_eq!(
        api.get("web-abc").await.unwrap().endpoints[0].addresses,
        ["10.0.0.1", "10.0.0.2"]
    );
    assert!(api.get_opt("web-new").await.unwrap().is_none());
}

#[tokio::test]
async fn endpoints_refuse_special_addresses() {
    let (_server, client) = setup().await;
    let api: Api<Endpoints> = Api::default_namespaced(client);
    let endpoints = |ip: &str| -> Endpoints {
        typed(json!({
            "metadata": {"name": "web"},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": 8080}]}],
        }))
    };
    let (message, _) = invalid(
        api.create(&PostParams::default(), &endpoints("127.0.0.1"))
            .await,
    );
    assert_eq!(
        message,
        "Endpoints \"web\" is invalid: subsets[0].addresses[0].ip: Invalid value: \"127.0.0.1\": \
         may not be in the loopback range (127.0.0.0/8, ::1/128)"
    );
    api.create(&PostParams::default(), &endpoints("10.0.0.9"))
        .await
        .unwrap();
}

#[tokio::test]
async fn names_must_be_dns_names() {
    let (_server, client) = setup().await;
    let pp = PostParams::default();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = |name: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let (message, causes) = invalid(cms.create(&pp, &cm("Web_1")).await);
    assert_eq!(
        message,
        "ConfigMap \"Web_1\" is invalid: metadata.name: Invalid value: \"Web_1\": a lowercase RFC \
         1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must \
         start and end with an alphanumeric character (e.g. 'example.com', regex used for \
         validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    assert_eq!(causes[0].0, "FieldValueInvalid");
    assert_eq!(causes[0].1, "metadata.name");
    cms.create(&pp, &cm("web.config-1")).await.unwrap();
    let generated = cms
        .create(
            &pp,
            &ConfigMap {
                metadata: ObjectMeta {
                    generate_name: Some("web-".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .unwrap();
    assert!(generated.metadata.name.unwrap().starts_with("web-"));
    let (_, causes) = invalid(
        cms.create(
            &pp,
            &ConfigMap {
                metadata: ObjectMeta {
                    generate_name: Some("Web-".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await,
    );
    assert_eq!(causes[0].1, "metadata.generateName");

    let services: Api<Service> = Api::default_namespaced(client.clone());
    let service = |name: &str| -> Service {
        typed(json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}))
    };
    let (message, _) = invalid(services.create(&pp, &service("1web")).await);
    assert!(
        message.starts_with(
            "Service \"1web\" is invalid: metadata.name: Invalid value: \"1web\": a DNS-1035 label \
             must consist of lower case alphanumeric characters or '-', start with an alphabetic \
             character"
        ),
        "{message}"
    );
    invalid(services.create(&pp, &service("web.shop")).await);
    services.create(&pp, &service("web-1")).await.unwrap();

    let namespaces: Api<Namespace> = Api::all(client);
    let namespace = |name: &str| -> Namespace { typed(json!({"metadata": {"name": name}})) };
    let (message, _) = invalid(namespaces.create(&pp, &namespace("shop.eu")).await);
    assert_eq!(
        message,
        "Namespace \"shop.eu\" is invalid: metadata.name: Invalid value: \"shop.eu\": must not contain dots"
    );
    let (message, _) = invalid(namespaces.create(&pp, &namespace(&"a".repeat(64))).await);
    assert!(
        message.contains("must be no more than 63 characters"),
        "{message}"
    );
    namespaces.create(&pp, &namespace("1shop")).await.unwrap();
}

/// A CRD `things.example.com` whose schema uses what the server checks.
async fn install_thing_crd(client: &Client) {
    let crd: CustomResourceDefinition = typed(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Thing", "plural": "things"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["address"],
                            "properties": {
                                "address": {"type": "string", "minLength": 2, "maxLength": 45},
                                "protocol": {"type": "string", "enum": ["HTTP", "gRPC"]},
                                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "timeout": {"type": "string", "nullable": true,
                                            "pattern": "^[0-9]+(ms|s)$"},
                                "target": {"x-kubernetes-int-or-string": true},
                                "hosts": {"type": "array", "maxItems": 2,
                                          "items": {"type": "string"}},
                                "extra": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": true},
                            },
                        },
                        "status": {
                            "type": "object",
                            "properties": {"ready": {"type": "boolean"}},
                        },
                    },
                }},
            }],
        },
    }));
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("create the Thing CRD");
}

fn things(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Thing");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "things");
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn thing(name: &str, spec: Value) -> DynamicObject {
    typed(json!({
        "apiVersion": "example.com/v1", "kind": "Thing",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
}

#[tokio::test]
async fn custom_resources_follow_their_schema() {
    let (_server, client) = setup().await;
    install_thing_crd(&client).await;
    let api = things(&client);
    let pp = PostParams::default();

    let (message, causes) = invalid(api.create(&pp, &thing("w", json!({"address": ""}))).await);
    assert_eq!(
        message,
        "Thing.example.com \"w\" is invalid: spec.address: Invalid value: \"\": spec.address in \
         body should be at least 2 chars long"
    );
    assert_eq!(
        causes,
        [(
            "FieldValueInvalid".to_string(),
            "spec.address".to_string(),
            "Invalid value: \"\": spec.address in body should be at least 2 chars long".to_string()
        )]
    );
    let (message, causes) = invalid(api.create(&pp, &thing("w", json!({"port": 80}))).await);
    assert_eq!(
        message,
        "Thing.example.com \"w\" is invalid: spec.address: Required value"
    );
    assert_eq!(causes[0].0, "FieldValueRequired");

    let (message, causes) = invalid(
        api.create(
            &pp,
            &thing(
                "w",
                json!({"address": "10.0.0.1", "protocol": "TCP", "port": "80", "timeout": "5m",
                       "target": true, "hosts": ["a", "b", "c"]}),
            ),
        )
        .await,
    );
    let by_field: Vec<(&str, &str, &str)> = causes
        .iter()
        .map(|(r, f, m)| (r.as_str(), f.as_str(), m.as_str()))
        .collect();
    for expected in [
        (
            "FieldValueNotSupported",
            "spec.protocol",
            "Unsupported value: \"TCP\": supported values: \"HTTP\", \"gRPC\"",
        ),
        (
            "FieldValueTypeInvalid",
            "spec.port",
            "Invalid value: \"string\": spec.port in body must be of type integer: \"string\"",
        ),
        (
            "FieldValueInvalid",
            "spec.timeout",
            "Invalid value: \"5m\": spec.timeout in body should match '^[0-9]+(ms|s)$'",
        ),
        (
            "FieldValueTypeInvalid",
            "spec.target",
            "Invalid value: \"boolean\": spec.target in body must be of type integer,string: \"boolean\"",
        ),
        (
            "FieldValueTooMany",
            "spec.hosts",
            "Too many: 3: must have at most 2 items",
        ),
    ] {
        assert!(by_field.contains(&expected), "{expected:?} in {by_field:?}");
    }
    assert_eq!(causes.len(), 5, "{causes:?}");
    assert!(
        message.starts_with("Thing.example.com \"w\" is invalid: ["),
        "{message}"
    );
    let (_, causes) = invalid(
        api.create(&pp, &thing("w", json!({"address": "10.0.0.1", "port": 0})))
            .await,
    );
    assert_eq!(
        causes[0].2,
        "Invalid value: 0: spec.port in body should be greater than or equal to 1"
    );

    // A valid object passes; fields the schema does not declare are pruned, except under
    // x-kubernetes-preserve-unknown-fields; a null for a nullable field is kept.
    let created = api
        .create(
            &pp,
            &thing(
                "w",
                json!({"address": "10.0.0.1", "protocol": "gRPC", "port": 8080, "target": "http",
                       "timeout": null, "hosts": ["a"], "unknown": {"x": 1},
                       "extra": {"anything": [1, 2]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        created.data["spec"],
        json!({"address": "10.0.0.1", "protocol": "gRPC", "port": 8080, "target": "http",
               "timeout": null, "hosts": ["a"], "extra": {"anything": [1, 2]}})
    );

    // Replace, merge patch, JSON patch and apply that break the schema are refused; a dry
    // run too; the object stays as it was.
    let mut current = api.get("w").await.unwrap();
    current.data["spec"]["port"] = json!(70000);
    let (message, _) = invalid(api.replace("w", &pp, &current).await);
    assert_eq!(
        message,
        "Thing.example.com \"w\" is invalid: spec.port: Invalid value: 70000: spec.port in body \
         should be less than or equal to 65535"
    );
    invalid(
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protocol": "UDP"}})),
        )
        .await,
    );
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/spec/address"}])).unwrap();
    let (message, _) = invalid(
        api.patch("w", &PatchParams::default(), &Patch::Json::<()>(ops))
            .await,
    );
    assert_eq!(
        message,
        "Thing.example.com \"w\" is invalid: spec.address: Required value"
    );
    invalid(
        api.patch(
            "w",
            &PatchParams::apply("test"),
            &Patch::Apply(thing("w", json!({"address": "x"}))),
        )
        .await,
    );
    invalid(
        api.patch(
            "w",
            &PatchParams::default().dry_run(),
            &Patch::Merge(json!({"spec": {"hosts": [1]}})),
        )
        .await,
    );
    let now = api.get("w").await.unwrap();
    assert_eq!(now.data["spec"], created.data["spec"]);

    // A patch that only adds undeclared fields is pruned to nothing: no new generation.
    let pruned = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"typo": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(pruned.data["spec"], created.data["spec"]);
    assert_eq!(pruned.metadata.generation, created.metadata.generation);
    assert_eq!(
        pruned.metadata.resource_version,
        created.metadata.resource_version
    );

    // The status subresource is checked and pruned too.
    let (message, _) = invalid(
        api.patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": "yes"}})),
        )
        .await,
    );
    assert_eq!(
        message,
        "Thing.example.com \"w\" is invalid: status.ready: Invalid value: \"string\": \
         status.ready in body must be of type boolean: \"string\""
    );
    let status = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true, "other": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(status.data["status"], json!({"ready": true}));

    // Names of custom resources are DNS subdomains.
    let (message, _) = invalid(
        api.create(&pp, &thing("My_Thing", json!({"address": "10.0.0.1"})))
            .await,
    );
    assert!(
        message.starts_with(
            "Thing.example.com \"My_Thing\" is invalid: metadata.name: Invalid value: \"My_Thing\""
        ),
        "{message}"
    );
}

#[tokio::test]
async fn gateway_api_kinds_stay_lenient() {
    let (_server, client) = setup().await;
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let route: DynamicObject = typed(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "web"}], "anything": {"goes": [1, "two"]}},
    }));
    let created = api.create(&PostParams::default(), &route).await.unwrap();
    assert_eq!(
        created.data["spec"]["anything"],
        json!({"goes": [1, "two"]})
    );
}

#[tokio::test]
async fn objects_stored_before_a_stricter_schema_stay_usable() {
    let (server, client) = setup().await;
    install_thing_crd(&client).await;
    let old = json!({
        "apiVersion": "example.com/v1", "kind": "Thing",
        "metadata": {"name": "old", "namespace": "default"},
        "spec": {"address": "x", "port": "80"},
    });
    let err = server.upsert(old.clone()).unwrap_err();
    assert_eq!((err.code, err.reason), (422, "Invalid"));
    assert_eq!(
        err.message,
        "Thing.example.com \"old\" is invalid: [spec.address: Invalid value: \"x\": spec.address \
         in body should be at least 2 chars long, spec.port: Invalid value: \"string\": \
         spec.port in body must be of type integer: \"string\"]"
    );
    server.upsert_unvalidated(old).unwrap();
    let api = things(&client);
    assert_eq!(api.get("old").await.unwrap().data["spec"]["port"], "80");
    // A status write checks only the status.
    let written = api
        .patch_status(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .unwrap();
    assert_eq!(written.data["status"], json!({"ready": true}));
    // An update that leaves the invalid fields alone passes (ratcheting); one that changes
    // them must make them valid.
    let updated = api
        .patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"protocol": "HTTP"}})),
        )
        .await
        .unwrap();
    assert_eq!(updated.data["spec"]["protocol"], "HTTP");
    let (message, _) = invalid(
        api.patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"port": "81"}})),
        )
        .await,
    );
    assert_eq!(
        message,
        "Thing.example.com \"old\" is invalid: spec.port: Invalid value: \"string\": spec.port \
         in body must be of type integer: \"string\""
    );
    // Names are checked all the same.
    let err = server
        .upsert_unvalidated(json!({
            "apiVersion": "example.com/v1", "kind": "Thing",
            "metadata": {"name": "Old", "namespace": "default"},
            "spec": {"address": "10.0.0.1"},
        }))
        .unwrap_err();
    assert_eq!(err.code, 422);
}
