//! Service-account tokens through kube-rs: TokenRequest (`create_token_request`) issues
//! them, TokenReview checks them (audiences, expiry, deleted service accounts); secrets
//! created, read, patched and watched, as the controller's identity Secret needs.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec, TokenReviewStatus,
};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;

use crate::common::{api_code, setup, within};

async fn review(client: &Client, token: &str, audiences: &[&str]) -> TokenReviewStatus {
    let api: Api<TokenReview> = Api::all(client.clone());
    let r = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..TokenReview::default()
    };
    api.create(&PostParams::default(), &r)
        .await
        .expect("TokenReview created")
        .status
        .expect("a TokenReview has a status")
}

fn service_account(name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    }
}

#[tokio::test]
async fn token_request_then_review() {
    let (server, client) = setup().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["mesh.dev/identity".into()],
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    // No such ServiceAccount yet: 404, as from a real server.
    assert_eq!(
        api_code(
            sas.create_token_request("web", &PostParams::default(), &req)
                .await
        ),
        404
    );
    let sa = sas
        .create(&PostParams::default(), &service_account("web"))
        .await
        .unwrap();
    let issued = sas
        .create_token_request("web", &PostParams::default(), &req)
        .await
        .expect("token issued");
    let status = issued.status.expect("status");
    assert!(!status.token.is_empty());
    let ok = review(&client, &status.token, &["mesh.dev/identity"]).await;
    assert_eq!(ok.authenticated, Some(true), "{ok:?}");
    let user = ok.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:web")
    );
    assert_eq!(user.uid, sa.metadata.uid);
    assert_eq!(ok.audiences, Some(vec!["mesh.dev/identity".to_string()]));

    let wrong = review(&client, &status.token, &["other"]).await;
    assert_eq!(wrong.authenticated, Some(false));
    assert!(wrong.error.unwrap_or_default().contains("audience"));
    let unknown = review(&client, "not-a-token", &["mesh.dev/identity"]).await;
    assert_eq!(unknown.authenticated, Some(false));

    // Too short a lifetime through the API is invalid (422).
    let short = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(5),
            ..req.spec.clone()
        },
        ..TokenRequest::default()
    };
    assert_eq!(
        api_code(
            sas.create_token_request("web", &PostParams::default(), &short)
                .await
        ),
        422
    );

    // Deleting the ServiceAccount invalidates its tokens.
    sas.delete("web", &DeleteParams::default()).await.unwrap();
    let gone = review(&client, &status.token, &["mesh.dev/identity"]).await;
    assert_eq!(gone.authenticated, Some(false));
    drop(server);
}

#[tokio::test]
async fn issue_token_helper_and_expiry() {
    let (server, client) = setup().await;
    let token = server.issue_token("shop", "db", &["a", "b"], Duration::from_secs(60));
    let ok = review(&client, &token, &["b", "c"]).await;
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(ok.audiences, Some(vec!["b".to_string()]));
    assert_eq!(
        ok.user.and_then(|u| u.username).as_deref(),
        Some("system:serviceaccount:shop:db")
    );
    let short = server.issue_token("shop", "db", &["a"], Duration::from_millis(200));
    assert_eq!(
        review(&client, &short, &["a"]).await.authenticated,
        Some(true)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expired = review(&client, &short, &["a"]).await;
    assert_eq!(expired.authenticated, Some(false));
    assert!(expired.error.unwrap_or_default().contains("expired"));
}

#[tokio::test]
async fn secrets_create_get_patch_watch() {
    let (_server, client) = setup().await;
    let api: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("ca".into()),
            ..ObjectMeta::default()
        },
        string_data: Some([("a".to_string(), "one".to_string())].into()),
        ..Secret::default()
    };
    api.create(&PostParams::default(), &secret).await.unwrap();
    let got = api.get("ca").await.unwrap();
    assert_eq!(
        got.data.unwrap().get("a"),
        Some(&ByteString(b"one".to_vec()))
    );
    let mut events = watcher::watcher(
        api.clone(),
        watcher::Config::default().fields("metadata.name=ca"),
    )
    .boxed();
    let patch = serde_json::json!({"data": {"a": null, "b": ByteString(b"two".to_vec())}});
    api.patch("ca", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    within("the watcher sees the patched Secret", async {
        while let Some(ev) = events.next().await {
            let s = match ev.unwrap() {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => s,
                _ => continue,
            };
            let data = s.data.unwrap_or_default();
            if data.get("b") == Some(&ByteString(b"two".to_vec())) {
                assert!(!data.contains_key("a"));
                return;
            }
        }
        panic!("the watch ended");
    })
    .await;
}
