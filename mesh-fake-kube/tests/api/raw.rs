//! Plain HTTP from a thread without any async runtime: the server runs on its own thread, so
//! it serves callers that block. Also checks that errors are Status objects.

use std::io::{Read, Write};
use std::net::TcpStream;

use mesh_fake_kube::FakeApiServer;

fn get(server: &FakeApiServer, path: &str) -> (u16, serde_json::Value) {
    get_with(server, path, "")
}

fn get_with(server: &FakeApiServer, path: &str, headers: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    (
        code,
        serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn serves_blocking_callers_and_reports_status_errors() {
    let server = FakeApiServer::start();
    let (code, body) = get(&server, "/api");
    assert_eq!(code, 200);
    assert_eq!(body["versions"][0], "v1");
    let (code, body) = get(&server, "/api/v1/namespaces/default/services/nope");
    assert_eq!(code, 404);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "NotFound");
    assert_eq!(body["message"], "services \"nope\" not found");
    let (code, _) = get(&server, "/apis/nope.example.com/v1/things");
    assert_eq!(code, 404);
    let (code, body) = get(
        &server,
        "/api/v1/namespaces/default/pods?labelSelector=a%20in%20b",
    );
    assert_eq!(code, 400);
    assert_eq!(body["reason"], "BadRequest");
    let (code, body) = get_with(
        &server,
        "/api/v1/namespaces",
        "Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1\r\n",
    );
    assert_eq!(code, 200);
    assert_eq!(body["kind"], "PartialObjectMetadataList");
    assert_eq!(body["items"][0]["kind"], "PartialObjectMetadata");
    assert!(body["items"][0].get("spec").is_none());
    assert_eq!(server.request_count(), 5);
    let addr = server.addr();
    server.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "stopped servers stop listening"
    );
}

#[test]
fn register_serves_a_kind_without_a_crd() {
    let server = FakeApiServer::start();
    server.register(
        mesh_fake_kube::ResourceType::new("example.org", "v1alpha1", "Gadget", "gadgets")
            .with_status(),
    );
    server
        .upsert(serde_json::json!({
            "apiVersion": "example.org/v1alpha1",
            "kind": "Gadget",
            "metadata": {"name": "g", "namespace": "kube-system"},
            "spec": {"x": 1},
            "status": {"ok": true},
        }))
        .unwrap();
    let (code, body) = get(
        &server,
        "/apis/example.org/v1alpha1/namespaces/kube-system/gadgets/g",
    );
    assert_eq!(code, 200);
    assert_eq!(body["status"]["ok"], true);
    let (code, body) = get(&server, "/apis/example.org/v1alpha1");
    assert_eq!(code, 200);
    assert_eq!(body["resources"][1]["name"], "gadgets/status");
}
