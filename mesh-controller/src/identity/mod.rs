//! The controller's certificate authority: the `Identity` gRPC API, proofs of identity,
//! and automatic trust-anchor rotation.
//!
//! - [`source`]: CA material from an identity directory (local mode) or a Secret.
//! - [`proof`]: join tokens (local mode) and TokenReview (Kubernetes).
//! - [`rotation`]: the pure rotation state machine; [`drive`] runs it against the source and
//!   the proxies' reports and publishes what proxies get.
//! - [`service`]: `Identity.Certify` and `Identity.Watch`.
//!
//! Identity is off when no material is configured (local mode without `--identity-dir`) or
//! the Secret does not exist yet: Certify and Watch then answer UNAVAILABLE with a message
//! saying how to turn it on.

pub mod proof;
pub mod rotation;
pub mod service;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh_identity::ca::{Anchor, Issuer};
use mesh_proto::v1 as pb;
use tokio::sync::watch;

use crate::metrics::{Metrics, PhaseLabel, ProxiesLabel};
use proof::Prover;
use rotation::{Held, Phase, Rotation, Step};
use source::{hex, Source};

/// Settings of the CA.
#[derive(Clone, Debug)]
pub struct Settings {
    pub trust_domain: String,
    pub leaf_lifetime: Duration,
    pub renew_jitter: Duration,
    /// No rotation step before this long after start (proxies reconnect first).
    pub rotation_grace: Duration,
}

/// What proxies get now: the bundle, the issuer that signs, the rotation phase.
pub struct Published {
    pub phase: Phase,
    pub bundle_version: u64,
    pub anchors: Vec<Anchor>,
    pub issuer: Issuer,
    /// The next material's issuer and anchors during a rotation (for `/status`).
    pub next: Option<(Vec<Anchor>, Issuer)>,
    pub update: pb::IdentityUpdate,
}

/// The CA's state as the gRPC API sees it.
#[derive(Clone)]
pub enum Current {
    /// No certificates: why, and how to turn identity on.
    Off(String),
    Ready(Arc<Published>),
}

/// A connected proxy (one Watch stream).
#[derive(Clone, Debug, Default)]
struct Proxy {
    identity: String,
    workload: String,
    held: Held,
}

/// The CA: settings, prover, what is published, and the connected proxies.
pub struct IdentityState {
    pub settings: Settings,
    prover: Option<Prover>,
    source: String,
    current: watch::Sender<Current>,
    proxies: Mutex<(u64, HashMap<u64, Proxy>)>,
    proxies_changed: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
}

/// A registered Watch stream; dropping it forgets the proxy.
pub struct ProxyHandle {
    id: u64,
    state: Arc<IdentityState>,
}

impl ProxyHandle {
    /// Records what the proxy reports it holds.
    pub fn report(&self, r: &pb::IdentityReport) {
        {
            let mut p = self.state.lock_proxies();
            if let Some(proxy) = p.1.get_mut(&self.id) {
                if !r.identity.is_empty() {
                    proxy.identity.clone_from(&r.identity);
                }
                if !r.workload.is_empty() {
                    proxy.workload.clone_from(&r.workload);
                }
                proxy.held = Held {
                    bundle_version: r.bundle_version,
                    leaf_issuer: <[u8; 32]>::try_from(r.leaf_issuer_sha256.as_slice()).ok(),
                };
            }
        }
        self.state.proxies_changed.send_modify(|g| *g += 1);
        self.state.update_proxy_metrics();
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.state.lock_proxies().1.remove(&self.id);
        self.state.proxies_changed.send_modify(|g| *g += 1);
        self.state.update_proxy_metrics();
    }
}

/// Counts of proxies for `/status` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProxyCounts {
    pub connected: usize,
    pub holding_bundle: usize,
    pub on_current_issuer: usize,
}

impl IdentityState {
    fn build(
        settings: Settings,
        prover: Option<Prover>,
        source: String,
        initial: Current,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (current, _) = watch::channel(initial);
        let (proxies_changed, _) = watch::channel(0);
        let state = Arc::new(Self {
            settings,
            prover,
            source,
            current,
            proxies: Mutex::new((0, HashMap::new())),
            proxies_changed,
            metrics,
        });
        state.set_phase_metric(Phase::Idle);
        state.update_proxy_metrics();
        state
    }

    /// Identity off for good (no source configured): `why` says how to turn it on.
    pub fn off(settings: Settings, metrics: Arc<Metrics>, why: String) -> Arc<Self> {
        Self::build(settings, None, String::new(), Current::Off(why), metrics)
    }

    /// Identity from `source`, checking proofs with `prover`; off until [`drive`] publishes.
    pub fn new(
        settings: Settings,
        prover: Prover,
        source: &Source,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let waiting = format!(
            "the CA material from the {} is not loaded yet",
            source.describe()
        );
        Self::build(
            settings,
            Some(prover),
            source.describe(),
            Current::Off(waiting),
            metrics,
        )
    }

    pub fn enabled(&self) -> bool {
        self.prover.is_some()
    }

    pub fn prover(&self) -> Option<&Prover> {
        self.prover.as_ref()
    }

    /// What is published now, and its changes.
    pub fn subscribe(&self) -> watch::Receiver<Current> {
        self.current.subscribe()
    }

    pub fn current(&self) -> Current {
        self.current.borrow().clone()
    }

    fn lock_proxies(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Proxy>)> {
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a Watch stream.
    pub fn register(self: &Arc<Self>) -> ProxyHandle {
        let id = {
            let mut p = self.lock_proxies();
            p.0 += 1;
            let id = p.0;
            p.1.insert(id, Proxy::default());
            id
        };
        self.proxies_changed.send_modify(|g| *g += 1);
        self.update_proxy_metrics();
        ProxyHandle {
            id,
            state: self.clone(),
        }
    }

    fn held(&self) -> Vec<Held> {
        self.lock_proxies()
            .1
            .values()
            .map(|p| p.held.clone())
            .collect()
    }

    pub fn proxy_counts(&self) -> ProxyCounts {
        let (version, issuer) = match &*self.current.borrow() {
            Current::Ready(p) => (p.bundle_version, Some(p.issuer.sha256())),
            Current::Off(_) => (0, None),
        };
        let held = self.held();
        ProxyCounts {
            connected: held.len(),
            holding_bundle: held
                .iter()
                .filter(|h| version != 0 && h.bundle_version == version)
                .count(),
            on_current_issuer: held
                .iter()
                .filter(|h| issuer.is_some() && h.leaf_issuer == issuer)
                .count(),
        }
    }

    fn update_proxy_metrics(&self) {
        let c = self.proxy_counts();
        let set = |state: &'static str, n: usize| {
            self.metrics
                .identity_proxies
                .get_or_create(&ProxiesLabel { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("connected", c.connected);
        set("holding_bundle", c.holding_bundle);
        set("on_current_issuer", c.on_current_issuer);
    }

    fn set_phase_metric(&self, phase: Phase) {
        for p in Phase::ALL {
            self.metrics
                .rotation_phase
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .set(i64::from(p == phase));
        }
    }

    /// The `identity` section of `/status`.
    pub fn status_json(&self) -> serde_json::Value {
        let proxies = self.proxy_counts();
        let cert = |a: &Anchor| hex(&a.sha256());
        let issuer = |i: &Issuer| {
            serde_json::json!({
                "sha256": hex(&i.sha256()),
                "notAfter": rfc3339(i.not_after()),
            })
        };
        match &*self.current.borrow() {
            Current::Off(why) => serde_json::json!({
                "enabled": false,
                "source": self.source,
                "phase": Phase::Idle,
                "message": why,
                "proxies": proxies,
            }),
            Current::Ready(p) => serde_json::json!({
                "enabled": true,
                "source": self.source,
                "phase": p.phase,
                "bundle_version": p.bundle_version,
                "anchors": p.anchors.iter().map(cert).collect::<Vec<_>>(),
                "issuer": issuer(&p.issuer),
                "next": p.next.as_ref().map(|(anchors, i)| serde_json::json!({
                    "anchors": anchors.iter().map(cert).collect::<Vec<_>>(),
                    "issuer": issuer(i),
                })),
                "proxies": proxies,
            }),
        }
    }

    /// Publishes `current` unless it is what proxies have already (same phase and update).
    fn publish(&self, current: Current) {
        if let Current::Ready(p) = &current {
            self.set_phase_metric(p.phase);
        }
        self.current.send_if_modified(|old| {
            let same = match (&*old, &current) {
                (Current::Off(a), Current::Off(b)) => a == b,
                (Current::Ready(a), Current::Ready(b)) => {
                    a.phase == b.phase
                        && a.update == b.update
                        && a.next.as_ref().map(|n| n.1.sha256())
                            == b.next.as_ref().map(|n| n.1.sha256())
                }
                _ => false,
            };
            if !same {
                *old = current;
            }
            !same
        });
        self.update_proxy_metrics();
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn anchors_version(anchors: &[&Anchor]) -> u64 {
    rotation::bundle_version(anchors.iter().map(|a| a.cert_der().as_ref()))
}

/// Builds what proxies get in `phase`.
fn published(settings: &Settings, m: &source::Material, phase: Phase) -> Published {
    let plan = rotation::plan(phase);
    let mut anchors: Vec<Anchor> = Vec::new();
    let mut add = |list: &[Anchor]| {
        for a in list {
            if !anchors.iter().any(|x| x.cert_der() == a.cert_der()) {
                anchors.push(a.clone());
            }
        }
    };
    let next = m.next.as_ref();
    if plan.current_anchors || next.is_none() {
        add(&m.current.anchors);
    }
    if let (true, Some(n)) = (plan.next_anchors, next) {
        add(&n.anchors);
    }
    let issuer = match (plan.sign_with_next, next) {
        (true, Some(n)) => n.issuer.clone(),
        _ => m.current.issuer.clone(),
    };
    let refs: Vec<&Anchor> = anchors.iter().collect();
    let bundle_version = anchors_version(&refs);
    let update = pb::IdentityUpdate {
        bundle: Some(pb::TrustBundle {
            version: bundle_version,
            anchors_der: anchors.iter().map(|a| a.cert_der().to_vec()).collect(),
        }),
        issuer_sha256: issuer.sha256().to_vec(),
        renew_jitter_ms: u32::try_from(settings.renew_jitter.as_millis()).unwrap_or(u32::MAX),
    };
    Published {
        phase,
        bundle_version,
        anchors,
        issuer,
        next: next.map(|n| (n.anchors.clone(), n.issuer.clone())),
        update,
    }
}

/// The facts of the rotation to `m.next`.
fn rotation_of(m: &source::Material) -> Option<Rotation> {
    let n = m.next.as_ref()?;
    let mut both: Vec<&Anchor> = m.current.anchors.iter().collect();
    both.extend(n.anchors.iter());
    let next: Vec<&Anchor> = n.anchors.iter().collect();
    Some(Rotation {
        both_version: anchors_version(&both),
        next_version: anchors_version(&next),
        next_issuer: n.issuer.sha256(),
    })
}

/// Runs the CA: follows the source, drives rotations from the proxies' reports, publishes.
pub async fn drive(
    state: Arc<IdentityState>,
    source: Arc<Source>,
    mut rx: watch::Receiver<source::State>,
) {
    let mut proxies_rx = state.proxies_changed.subscribe();
    let settled = tokio::time::Instant::now() + state.settings.rotation_grace;
    // The phase reached for a next issuer, and whether it was promoted already.
    let mut phase: Option<([u8; 32], Phase)> = None;
    let mut promoted: Option<[u8; 32]> = None;
    let mut last_logged: Option<(Phase, u64)> = None;
    loop {
        let src = rx.borrow_and_update().clone();
        let mut again = false;
        match src {
            source::State::Missing(why) => {
                phase = None;
                state.publish(Current::Off(why));
            }
            source::State::Ready(m) => {
                let now = match rotation_of(&m) {
                    None => {
                        phase = None;
                        Phase::Idle
                    }
                    Some(rot) => {
                        let held = state.held();
                        let resumed = rotation::resume(m.marker, &rot, &held);
                        let p = match phase {
                            Some((issuer, p)) if issuer == rot.next_issuer => p.max(resumed),
                            _ => resumed,
                        };
                        let step = if tokio::time::Instant::now() < settled {
                            // Proxies may still be reconnecting: resume, but do not advance.
                            Step::Stay(p)
                        } else {
                            rotation::step(p, &rot, &held)
                        };
                        let p = match step {
                            Step::Stay(p) => p,
                            Step::To(np) => match source.set_marker(np, &rot.next_issuer).await {
                                Ok(()) => {
                                    tracing::info!(phase = %np, "trust-anchor rotation: every connected proxy is ready for the next phase");
                                    again = true;
                                    np
                                }
                                Err(e) => {
                                    tracing::warn!(
                                        "trust-anchor rotation stays in phase {p}: {e:#}"
                                    );
                                    p
                                }
                            },
                            Step::Finish if promoted == Some(rot.next_issuer) => p,
                            Step::Finish => match source.promote().await {
                                Ok(()) => {
                                    tracing::info!("trust-anchor rotation done: the next anchors and issuer are now the current ones");
                                    promoted = Some(rot.next_issuer);
                                    p
                                }
                                Err(e) => {
                                    tracing::warn!("trust-anchor rotation cannot finish: {e:#}");
                                    p
                                }
                            },
                        };
                        phase = Some((rot.next_issuer, p));
                        p
                    }
                };
                let published = published(&state.settings, &m, now);
                if last_logged != Some((now, published.bundle_version)) {
                    tracing::info!(
                        phase = %now,
                        bundle_version = published.bundle_version,
                        anchors = published.anchors.len(),
                        issuer = %hex(&published.issuer.sha256()),
                        "identity: publishing the trust bundle and issuer"
                    );
                    last_logged = Some((now, published.bundle_version));
                }
                state.publish(Current::Ready(Arc::new(published)));
            }
        }
        if again {
            continue;
        }
        let wake = tokio::time::Instant::now() + source::POLL_INTERVAL;
        let wake = if settled > tokio::time::Instant::now() {
            wake.min(settled)
        } else {
            wake
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = proxies_rx.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Sets up the CA from the run flags: the identity directory when `--identity-dir` is set,
/// else on Kubernetes the `--identity-secret` (with TokenReview proofs), else off. Returns
/// the state and the tasks to run.
pub fn setup(
    args: &crate::RunArgs,
    client: Option<kube::Client>,
    metrics: Arc<Metrics>,
) -> (Arc<IdentityState>, Vec<tokio::task::JoinHandle<()>>) {
    let settings = Settings {
        trust_domain: args.trust_domain.clone(),
        leaf_lifetime: args.identity_leaf_lifetime,
        renew_jitter: args.identity_renew_jitter,
        rotation_grace: args.identity_rotation_grace,
    };
    let (source, prover) = match (&args.identity_dir, client) {
        (Some(dir), client) => {
            let prover = match client {
                Some(client) => Prover::Kubernetes {
                    client,
                    audience: args.identity_token_audience.clone(),
                },
                None => Prover::Local(proof::JoinTokens::new(dir)),
            };
            (Source::Dir(dir.clone()), prover)
        }
        (None, Some(client)) => {
            let s = &args.identity_secret;
            (
                Source::secret(client.clone(), &s.namespace, &s.name),
                Prover::Kubernetes {
                    client,
                    audience: args.identity_token_audience.clone(),
                },
            )
        }
        (None, None) => {
            let why = "the controller runs without --identity-dir (MESH_CONTROLLER_IDENTITY_DIR); create a CA with `mesh-controller identity init --dir D` and start the controller with --identity-dir D".to_string();
            tracing::info!("identity is off: {why}");
            return (IdentityState::off(settings, metrics, why), Vec::new());
        }
    };
    tracing::info!(source = %source.describe(), "identity: the CA reads its material from the {}", source.describe());
    let state = IdentityState::new(settings, prover, &source, metrics);
    let mut initial = source::State::Missing(format!(
        "the CA material from the {} is not loaded yet",
        source.describe()
    ));
    // A directory is read at once, so that identity is on when the gRPC server starts.
    if let Source::Dir(dir) = &source {
        if let Ok(m) = source::load_dir(dir) {
            let phase =
                rotation_of(&m).map_or(Phase::Idle, |rot| rotation::resume(m.marker, &rot, &[]));
            state.publish(Current::Ready(Arc::new(published(
                &state.settings,
                &m,
                phase,
            ))));
            initial = source::State::Ready(Arc::new(m));
        }
    }
    let (tx, rx) = watch::channel(initial);
    let source = Arc::new(source);
    let tasks = vec![
        tokio::spawn(source.clone().run(tx)),
        tokio::spawn(drive(state.clone(), source, rx)),
    ];
    (state, tasks)
}
