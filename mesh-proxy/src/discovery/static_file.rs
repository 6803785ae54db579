//! Discovery from a YAML file of services, so the proxy can run without a controller:
//!
//! ```yaml
//! services:
//!   - authority: web.local:8080
//!     endpoints:
//!       - addr: 127.0.0.1:9001
//!       - addr: 127.0.0.1:9002
//!         hint: { kind: meshed_h2, inbound_port: 4143 }
//!     routes: [ ... ]        # see docs/static-config.md
//!     policy: { balancer: round_robin }
//! ```
//!
//! The file is polled for changes; a file that fails to parse or validate is reported and the
//! last good state stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use mesh_core::{Authority, Endpoint, ServiceProfile};

use crate::destination::{Destination, Resolve, Update};

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    #[serde(default)]
    pub services: Vec<StaticService>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticService {
    pub authority: Authority,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(flatten)]
    pub profile: ServiceProfile,
}

/// Reads and validates the file; the error names the file and the field.
pub fn load(path: &Path) -> anyhow::Result<HashMap<Authority, StaticService>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let file: StaticFile =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (i, svc) in file.services.into_iter().enumerate() {
        svc.profile.validate().map_err(|e| {
            anyhow::anyhow!(
                "{}: services[{i}] ({}): {}",
                path.display(),
                svc.authority,
                e
            )
        })?;
        if out.contains_key(&svc.authority) {
            anyhow::bail!(
                "{}: services[{i}]: authority {} is listed twice",
                path.display(),
                svc.authority
            );
        }
        out.insert(svc.authority.clone(), svc);
    }
    Ok(out)
}

pub struct StaticResolver {
    state: Mutex<State>,
}

struct State {
    services: HashMap<Authority, StaticService>,
    subscribers: Vec<Weak<Destination>>,
}

impl StaticResolver {
    /// Loads the file (an error here stops the proxy from starting) and starts polling it.
    pub fn start(path: PathBuf, poll: Duration) -> anyhow::Result<Arc<Self>> {
        // Taken before reading, so that a change made after start-up is never missed.
        let mut last = modified(&path);
        let services = load(&path)?;
        let this = Arc::new(Self {
            state: Mutex::new(State {
                services,
                subscribers: Vec::new(),
            }),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(poll).await;
                let Some(this) = weak.upgrade() else { return };
                let now = modified(&path);
                if now == last {
                    continue;
                }
                last = now;
                match load(&path) {
                    Ok(services) => {
                        tracing::info!(file = %path.display(), services = services.len(), "reloaded static config");
                        this.replace(services);
                    }
                    Err(e) => {
                        tracing::error!("rejected static config, keeping the last good one: {e:#}")
                    }
                }
            }
        });
        Ok(this)
    }

    fn replace(&self, services: HashMap<Authority, StaticService>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.services = services;
        state.subscribers.retain(|w| w.strong_count() > 0);
        for dest in state.subscribers.iter().filter_map(Weak::upgrade) {
            dest.apply(update_for(&state.services, &dest.authority));
        }
    }
}

/// What tells a changed file apart: its modification time, size and inode (a time alone
/// misses two writes within the file system's timestamp resolution).
fn modified(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn update_for(services: &HashMap<Authority, StaticService>, authority: &Authority) -> Update {
    match services.get(authority) {
        Some(s) => Update::State {
            profile: s.profile.clone(),
            endpoints: s.endpoints.clone(),
        },
        None => Update::NotFound,
    }
}

impl Resolve for StaticResolver {
    fn subscribe(&self, dest: Arc<Destination>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        dest.apply(update_for(&state.services, &dest.authority));
        state.subscribers.push(Arc::downgrade(&dest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_file_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.yaml");
        std::fs::write(
            &p,
            "services:\n  - authority: web:80\n    routes: [ { name: r, timeout: 0s } ]\n",
        )
        .unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(
            err.contains("mesh.yaml") && err.contains("routes[0].timeout"),
            "{err}"
        );
        std::fs::write(&p, "services:\n  - authority: web\n").unwrap();
        let err = load(&p).unwrap_err().to_string();
        assert!(err.contains("has no port"), "{err}");
    }
}
