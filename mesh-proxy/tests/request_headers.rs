//! Route request header modifiers over real sockets: the upstream sees the headers a route
//! sets and adds and not those it removes, with routes from the static file and from the
//! (fake) controller, whose changes apply live.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use mesh_proto::v1 as pb;
use support::*;

/// The values of `name` in `h`, in order.
fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The headers every test request carries.
const CLIENT_HEADERS: &[(&str, &str)] = &[
    ("x-env", "dev"),
    ("x-env", "test"),
    ("x-via", "client"),
    ("x-debug", "1"),
    ("x-keep", "yes"),
];

#[tokio::test]
async fn static_file_routes_set_add_and_remove_headers() {
    let up = upstream("a", Behaviour::Ok).await;
    let yaml = format!(
        r#"services:
  - authority: "web.test:80"
    endpoints: [ {{ addr: "{}" }} ]
    routes:
      - name: api
        matches: [ {{ path: {{ prefix: /api }} }} ]
        request_headers:
          set: [ {{ name: X-Env, value: prod }}, {{ name: x-tenant, value: "blue team" }} ]
          add: [ {{ name: x-via, value: mesh }} ]
          remove: [ x-debug, x-absent ]
        retry: {{ max_retries: 1, on: [5xx], backoff_base: 1ms, backoff_max: 1ms }}
      - name: rest
"#,
        up.addr
    );
    let (_dir, path) = static_file(&yaml);
    let proxy = start_proxy(RawConfig {
        static_config: Some(path),
        ..raw_config()
    })
    .await;
    let c = h1_client();

    let status = get_with_headers(
        &c,
        proxy.outbound_addr,
        "web.test",
        "/api/x",
        CLIENT_HEADERS,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let h = up.last_headers();
    assert_eq!(
        values(&h, "x-env"),
        vec!["prod"],
        "set replaces every value"
    );
    assert_eq!(
        values(&h, "x-tenant"),
        vec!["blue team"],
        "set adds a missing header"
    );
    assert_eq!(values(&h, "x-via"), vec!["client", "mesh"], "add appends");
    assert!(h.get("x-debug").is_none(), "remove deletes: {h:?}");
    assert_eq!(values(&h, "x-keep"), vec!["yes"]);
    assert_eq!(values(&h, "host"), vec!["web.test"]);

    // Another route: the request goes out as the client sent it.
    get_with_headers(
        &c,
        proxy.outbound_addr,
        "web.test",
        "/other",
        CLIENT_HEADERS,
    )
    .await;
    let h = up.last_headers();
    assert_eq!(values(&h, "x-env"), vec!["dev", "test"]);
    assert_eq!(values(&h, "x-via"), vec!["client"]);
    assert_eq!(values(&h, "x-debug"), vec!["1"]);
    assert!(h.get("x-tenant").is_none());

    // A retried request carries the modified headers on every attempt, modified once.
    up.set(Behaviour::FailEvery(2));
    if up.hits() % 2 == 0 {
        // The next request must be an even one (answered 503), its retry an odd one.
        get_with_headers(&c, proxy.outbound_addr, "web.test", "/other", &[]).await;
    }
    let before = up.hits();
    let status = get_with_headers(
        &c,
        proxy.outbound_addr,
        "web.test",
        "/api/x",
        CLIENT_HEADERS,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.hits() - before, 2, "one retry");
    let all = up.headers.lock().unwrap().clone();
    for h in &all[all.len() - 2..] {
        assert_eq!(values(h, "x-env"), vec!["prod"]);
        assert_eq!(values(h, "x-via"), vec!["client", "mesh"]);
        assert!(h.get("x-debug").is_none());
    }

    // HTTP/2 from the app: the same.
    up.set(Behaviour::Ok);
    let (status, _) = h2_get(proxy.outbound_addr, "http://web.test:80/api/h2").await;
    assert_eq!(status, StatusCode::OK);
    let h = up.last_headers();
    assert_eq!(values(&h, "x-env"), vec!["prod"]);
    assert_eq!(values(&h, "x-via"), vec!["mesh"]);
}

/// A profile with one route that modifies headers as given.
fn profile(modifier: pb::HeaderModifier) -> pb::ServiceProfile {
    pb::ServiceProfile {
        routes: vec![pb::Route {
            name: "all".into(),
            request_headers: Some(modifier),
            ..Default::default()
        }],
        policy: None,
    }
}

fn header(name: &str, value: &str) -> pb::HeaderValue {
    pb::HeaderValue {
        name: name.into(),
        value: value.into(),
    }
}

#[tokio::test]
async fn controller_routes_modify_headers_and_changes_apply_live() {
    let up = upstream("a", Behaviour::Ok).await;
    let ctrl = Arc::new(FakeController::default());
    ctrl.set(
        "web.test:80",
        state(
            vec![endpoint(up.addr)],
            Some(profile(pb::HeaderModifier {
                set: vec![header("x-env", "prod")],
                add: vec![header("x-via", "mesh")],
                remove: vec!["x-debug".into()],
            })),
        ),
    )
    .await;
    let controller = start_controller(ctrl.clone());
    let proxy = start_proxy(RawConfig {
        controller_addr: Some(format!("http://{}", controller.addr)),
        ..raw_config()
    })
    .await;
    let c = h1_client();
    let status = get_with_headers(&c, proxy.outbound_addr, "web.test", "/", CLIENT_HEADERS).await;
    assert_eq!(status, StatusCode::OK);
    let h = up.last_headers();
    assert_eq!(values(&h, "x-env"), vec!["prod"]);
    assert_eq!(values(&h, "x-via"), vec!["client", "mesh"]);
    assert!(h.get("x-debug").is_none());

    // A new profile: now only x-keep is removed.
    let update = pb::DestinationUpdate {
        update: Some(pb::destination_update::Update::Profile(profile(
            pb::HeaderModifier {
                remove: vec!["X-Keep".into()],
                ..Default::default()
            },
        ))),
    };
    ctrl.push("web.test:80", update).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        get_with_headers(&c, proxy.outbound_addr, "web.test", "/", CLIENT_HEADERS).await;
        let h = up.last_headers();
        if h.get("x-keep").is_none() {
            assert_eq!(values(&h, "x-env"), vec!["dev", "test"]);
            assert_eq!(values(&h, "x-via"), vec!["client"]);
            assert_eq!(values(&h, "x-debug"), vec!["1"]);
            break;
        }
        assert!(Instant::now() < deadline, "the new profile never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A modifier naming a header the proxy manages is rejected; the last good one stays.
    let bad = pb::DestinationUpdate {
        update: Some(pb::destination_update::Update::Profile(profile(
            pb::HeaderModifier {
                set: vec![header("host", "elsewhere")],
                ..Default::default()
            },
        ))),
    };
    ctrl.push("web.test:80", bad).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    get_with_headers(&c, proxy.outbound_addr, "web.test", "/", CLIENT_HEADERS).await;
    let h = up.last_headers();
    assert!(h.get("x-keep").is_none());
    assert_eq!(values(&h, "host"), vec!["web.test"]);
    let (_, m) = admin_get(proxy.admin_addr, "/metrics").await;
    assert!(
        metric(&m, "mesh_proxy_discovery_errors_total") >= 1.0,
        "{m}"
    );
}
