//! The kubeconfig that points clients at the fake server: one cluster at the server's URL,
//! one user with a dummy bearer token (the server ignores it), one context with namespace
//! `default`, selected as the current context.

/// Name used for the cluster, user and context entries.
pub(crate) const NAME: &str = "fake-kube";

/// A kubeconfig YAML document for a server at `url` (`http://127.0.0.1:PORT`).
pub(crate) fn yaml(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {NAME}
  cluster:
    server: {url}
users:
- name: {NAME}
  user:
    token: fake-token
contexts:
- name: {NAME}
  context:
    cluster: {NAME}
    user: {NAME}
    namespace: default
current-context: {NAME}
preferences: {{}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_yaml() {
        let doc: serde_json::Value =
            serde_yaml_ng::from_str(&yaml("http://127.0.0.1:1234")).unwrap();
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1234"
        );
        assert_eq!(doc["current-context"], NAME);
        assert_eq!(doc["contexts"][0]["context"]["namespace"], "default");
        assert_eq!(doc["users"][0]["user"]["token"], "fake-token");
    }
}
