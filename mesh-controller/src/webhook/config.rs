//! The webhook's injection defaults: the `--inject-*` flags, replaced key by key by the
//! ConfigMap that `--inject-config` names (`meshctl install` writes `mesh-system/mesh-config`),
//! which is watched. A new ConfigMap applies to the next admission; one with a bad value is
//! refused as a whole, logged with the key, and the last good settings stay; while it does
//! not exist the flags' settings apply. `/status` says which is in use and why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use mesh_inject::Settings;
use tokio::sync::watch;

use crate::args::SecretRef;
use crate::named::{watch_named, Named};

/// How long an admission waits, after the controller starts, for the first answer about the
/// ConfigMap before it injects with the flags' settings (the API server gives a webhook
/// 5 s by default).
pub const FIRST_READ_WAIT: Duration = Duration::from_secs(2);

/// Which settings are in use, for `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InUse {
    /// No `--inject-config`: the flags, for good.
    Flags,
    /// The ConfigMap has not been read yet: the flags.
    Waiting,
    /// The ConfigMap's settings (of `resource_version`).
    ConfigMap,
    /// The ConfigMap does not exist: the flags.
    Missing,
    /// Every ConfigMap seen so far was refused: the flags.
    Rejected,
}

impl InUse {
    fn as_str(self) -> &'static str {
        match self {
            InUse::Flags => "flags",
            InUse::Waiting => "waiting",
            InUse::ConfigMap => "configMap",
            InUse::Missing => "missing",
            InUse::Rejected => "rejected",
        }
    }
}

#[derive(Debug)]
struct State {
    in_use: InUse,
    /// The resourceVersion of the ConfigMap whose settings are in use.
    resource_version: Option<String>,
    /// Why the ConfigMap's latest content is not in use (or cannot be read).
    problem: Option<String>,
}

/// The settings the next admission uses, shared by the watcher and the webhook.
#[derive(Debug)]
pub struct InjectDefaults {
    flags: Arc<Settings>,
    config_map: Option<SecretRef>,
    current: ArcSwap<Settings>,
    state: Mutex<State>,
    /// Whether the ConfigMap was read (or found missing, or failed) at least once.
    known: watch::Sender<bool>,
}

impl InjectDefaults {
    /// The flags' settings, to be replaced by `config_map` once it is read.
    pub fn new(flags: Settings, config_map: Option<SecretRef>) -> Self {
        let flags = Arc::new(flags);
        let in_use = if config_map.is_some() {
            InUse::Waiting
        } else {
            InUse::Flags
        };
        Self {
            current: ArcSwap::new(flags.clone()),
            flags,
            state: Mutex::new(State {
                in_use,
                resource_version: None,
                problem: None,
            }),
            known: watch::Sender::new(config_map.is_none()),
            config_map,
        }
    }

    /// The settings in force now.
    pub fn current(&self) -> Arc<Settings> {
        self.current.load_full()
    }

    /// Which settings are in use.
    pub fn in_use(&self) -> InUse {
        self.lock().in_use
    }

    /// Why the ConfigMap's latest content is not in use, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.lock().problem.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (at most `limit`) until the ConfigMap was read once; returns at once without
    /// `--inject-config`.
    pub async fn wait_first_read(&self, limit: Duration) {
        let mut rx = self.known.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|known| *known)).await;
    }

    /// `{"configMap", "inUse", "resourceVersion", "problem", "settings"}` for `/status`.
    pub fn status_json(&self) -> serde_json::Value {
        let (in_use, rv, problem) = {
            let st = self.lock();
            (st.in_use, st.resource_version.clone(), st.problem.clone())
        };
        let mut settings = self.current().config_map_data();
        settings.insert("trust-domain".into(), self.current().trust_domain.clone());
        serde_json::json!({
            "configMap": self.config_map.as_ref().map(ToString::to_string),
            "inUse": in_use.as_str(),
            "resourceVersion": rv,
            "problem": problem,
            "settings": settings,
        })
    }

    /// Applies one ConfigMap's content (its data and resourceVersion).
    pub fn apply(&self, data: &BTreeMap<String, String>, resource_version: Option<String>) {
        let name = self.name();
        let version = resource_version.as_deref().unwrap_or("?");
        match self.flags.with_config_map(data) {
            Ok(settings) => {
                let before = self.current();
                let changed = changed_keys(&before, &settings);
                self.current.store(Arc::new(settings));
                let was = {
                    let mut st = self.lock();
                    let was = st.in_use;
                    st.in_use = InUse::ConfigMap;
                    st.resource_version = resource_version.clone();
                    st.problem = None;
                    was
                };
                if was != InUse::ConfigMap || !changed.is_empty() {
                    tracing::info!(
                        config_map = %name,
                        resource_version = version,
                        changed = %changed.join(","),
                        "injection settings from the ConfigMap in use"
                    );
                }
            }
            Err(e) => {
                let mut st = self.lock();
                let keeping = if st.in_use == InUse::ConfigMap {
                    format!(
                        "the settings of its resourceVersion {} stay in use",
                        st.resource_version.as_deref().unwrap_or("?")
                    )
                } else {
                    st.in_use = InUse::Rejected;
                    "the --inject-* flags' settings stay in use".to_string()
                };
                let problem = format!(
                    "ConfigMap {name} (resourceVersion {version}) is refused, {keeping}: {e}; correct it (kubectl -n {} edit configmap {})",
                    self.config_map.as_ref().map_or("", |c| c.namespace.as_str()),
                    self.config_map.as_ref().map_or("", |c| c.name.as_str()),
                );
                if st.problem.as_ref() != Some(&problem) {
                    tracing::warn!(config_map = %name, "{problem}");
                }
                st.problem = Some(problem);
            }
        }
        self.known.send_replace(true);
    }

    /// The ConfigMap does not exist: the flags apply.
    pub fn missing(&self, deleted: bool) {
        let name = self.name();
        self.current.store(self.flags.clone());
        let problem = format!(
            "ConfigMap {name} does not exist{}; the --inject-* flags' settings are in use; create it (meshctl install writes it) or unset --inject-config",
            if deleted { " (it was deleted)" } else { "" }
        );
        {
            let mut st = self.lock();
            if st.problem.as_ref() != Some(&problem) {
                tracing::warn!(config_map = %name, "{problem}");
            }
            st.in_use = InUse::Missing;
            st.resource_version = None;
            st.problem = Some(problem);
        }
        self.known.send_replace(true);
    }

    /// Reading the ConfigMap failed: the settings in use stay.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        let name = self.name();
        let problem = format!(
            "cannot read ConfigMap {name}: {error}; the settings in use stay; the controller needs get, list and watch on it (see docs/controller.md, Admission webhook)"
        );
        {
            let mut st = self.lock();
            if st.problem.as_ref() != Some(&problem) {
                tracing::warn!(config_map = %name, "{problem}");
            }
            st.problem = Some(problem);
        }
        self.known.send_replace(true);
    }

    fn name(&self) -> String {
        self.config_map
            .as_ref()
            .map_or_else(|| "(none)".to_string(), ToString::to_string)
    }

    /// Follows the ConfigMap for ever (nothing to do without `--inject-config`).
    pub async fn watch(self: Arc<Self>, api: Api<ConfigMap>) {
        let Some(name) = self.config_map.clone() else {
            return;
        };
        watch_named(api, &name.name, |ev| match ev {
            Named::Present(cm) => {
                self.apply(&cm.data.unwrap_or_default(), cm.metadata.resource_version)
            }
            Named::Missing { deleted } => self.missing(deleted),
            Named::Failed(e) => self.failed(&e),
        })
        .await;
    }
}

/// The keys whose values differ.
fn changed_keys(a: &Settings, b: &Settings) -> Vec<String> {
    let (a, b) = (a.config_map_data(), b.config_map_data());
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn defaults() -> InjectDefaults {
        InjectDefaults::new(
            Settings::default(),
            Some(SecretRef {
                namespace: "mesh-system".into(),
                name: "mesh-config".into(),
            }),
        )
    }

    #[test]
    fn a_bad_config_map_keeps_the_last_good_settings() {
        let d = defaults();
        assert_eq!(d.in_use(), InUse::Waiting);
        d.apply(&data(&[("native-sidecar", "maybe")]), Some("1".into()));
        assert_eq!(d.in_use(), InUse::Rejected);
        assert_eq!(*d.current(), Settings::default());
        let p = d.problem().unwrap();
        assert!(p.contains("native-sidecar: 'maybe'"), "{p}");
        assert!(p.contains("flags' settings stay"), "{p}");

        d.apply(&data(&[("proxy-log-level", "debug")]), Some("2".into()));
        assert_eq!(d.in_use(), InUse::ConfigMap);
        assert_eq!(d.current().proxy_log_level, "debug");
        assert!(d.problem().is_none());

        d.apply(&data(&[("proxy-cpu-limit", "lots")]), Some("3".into()));
        assert_eq!(d.in_use(), InUse::ConfigMap);
        assert_eq!(d.current().proxy_log_level, "debug");
        let p = d.problem().unwrap();
        assert!(
            p.contains("proxy-cpu-limit") && p.contains("resourceVersion 2 stay"),
            "{p}"
        );
        let s = d.status_json();
        assert_eq!(s["resourceVersion"], "2");
        assert_eq!(s["settings"]["proxy-log-level"], "debug");

        d.missing(true);
        assert_eq!(d.in_use(), InUse::Missing);
        assert_eq!(*d.current(), Settings::default());
        assert!(d
            .problem()
            .unwrap()
            .contains("does not exist (it was deleted)"));
    }

    #[tokio::test]
    async fn admissions_wait_for_the_first_read_only_with_a_config_map() {
        let flags_only = InjectDefaults::new(Settings::default(), None);
        assert_eq!(flags_only.in_use(), InUse::Flags);
        tokio::time::timeout(
            Duration::from_millis(100),
            flags_only.wait_first_read(FIRST_READ_WAIT),
        )
        .await
        .expect("no wait without --inject-config");
        let d = Arc::new(defaults());
        let start = std::time::Instant::now();
        d.wait_first_read(Duration::from_millis(200)).await;
        assert!(start.elapsed() >= Duration::from_millis(200));
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait_first_read(Duration::from_secs(10)).await }
        });
        d.missing(false);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the first read ends the wait")
            .unwrap();
    }
}
