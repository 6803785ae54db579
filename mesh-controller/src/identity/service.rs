//! The `Identity` gRPC API: `Certify` signs a proxy's CSR when its proof proves the identity
//! asked for; `Watch` streams the trust bundle and issuer and records what each proxy holds.
//!
//! Every refusal is a gRPC status with a message saying what is wrong, counted in
//! `mesh_controller_certify_refused_total{reason}` and logged at info with the identity and
//! the reason (never the token).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use mesh_core::Identity;
use mesh_identity::ca::SignError;
use mesh_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::proof::Refusal;
use super::{Current, IdentityState};
use crate::metrics::{ApiLabel, ReasonLabel};

/// The Identity API over the CA state.
#[derive(Clone)]
pub struct IdentitySvc {
    pub state: Arc<IdentityState>,
}

impl IdentitySvc {
    fn refuse(&self, identity: &str, reason: &'static str, status: Status) -> Status {
        self.state
            .metrics
            .certify_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        tracing::info!(
            identity,
            reason,
            "certificate refused: {}",
            status.message()
        );
        status
    }

    async fn certify(&self, r: pb::CertifyRequest) -> Result<pb::CertifyResponse, Status> {
        let asked = r.identity.as_str();
        let published = match self.state.current() {
            Current::Off(why) => {
                return Err(self.refuse(
                    asked,
                    "identity_off",
                    Status::unavailable(format!("identity is off: {why}")),
                ))
            }
            Current::Ready(p) => p,
        };
        let Some(prover) = self.state.prover() else {
            return Err(self.refuse(
                asked,
                "identity_off",
                Status::unavailable("identity is off: no proof can be checked"),
            ));
        };
        let identity = Identity::parse(asked).map_err(|e| {
            self.refuse(
                asked,
                "bad_identity",
                Status::invalid_argument(format!("identity: {e}")),
            )
        })?;
        let td = &self.state.settings.trust_domain;
        if identity.trust_domain() != td {
            return Err(self.refuse(
                asked,
                "foreign_trust_domain",
                Status::invalid_argument(format!(
                    "identity {identity} is not in this mesh's trust domain '{td}'"
                )),
            ));
        }
        if let Err(refusal) = prover.check(&r.token, &r.workload, &identity, td).await {
            let reason = refusal.reason();
            let status = match &refusal {
                Refusal::Unauthenticated { message, .. } => Status::unauthenticated(message),
                Refusal::Denied { message, .. } => Status::permission_denied(message),
                Refusal::Unavailable { message, .. } => Status::unavailable(message),
            };
            return Err(self.refuse(asked, reason, status));
        }
        let leaf = published
            .issuer
            .sign_csr(&r.csr_der, &identity, self.state.settings.leaf_lifetime)
            .map_err(|e| match e {
                SignError::BadCsr(_) => self.refuse(
                    asked,
                    "bad_csr",
                    Status::invalid_argument(format!("csr_der: {e}")),
                ),
                SignError::WrongIdentity { .. } => self.refuse(
                    asked,
                    "csr_identity",
                    Status::invalid_argument(format!("csr_der: {e}")),
                ),
                other => self.refuse(
                    asked,
                    "sign_failed",
                    Status::internal(format!("cannot sign the certificate: {other}")),
                ),
            })?;
        let valid_until_unix = leaf
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.state.metrics.certificates_issued.inc();
        tracing::info!(
            identity = %identity,
            workload = %r.workload,
            valid_until_unix,
            "certificate issued"
        );
        Ok(pb::CertifyResponse {
            leaf_der: leaf.cert_der.to_vec(),
            intermediates_der: leaf.chain.iter().map(|c| c.to_vec()).collect(),
            valid_until_unix,
        })
    }
}

/// Counts an Identity.Watch stream as open until dropped.
struct OpenStream(Arc<IdentityState>);

impl OpenStream {
    fn new(state: Arc<IdentityState>) -> Self {
        state
            .metrics
            .streams_open
            .get_or_create(&ApiLabel { api: "identity" })
            .inc();
        Self(state)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .metrics
            .streams_open
            .get_or_create(&ApiLabel { api: "identity" })
            .dec();
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentitySvc {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        self.certify(request.into_inner()).await.map(Response::new)
    }

    type WatchStream = ReceiverStream<Result<pb::IdentityUpdate, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::IdentityReport>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut current = self.state.subscribe();
        if let Current::Off(why) = &*current.borrow() {
            return Err(Status::unavailable(format!("identity is off: {why}")));
        }
        let mut reports = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let _open = OpenStream::new(state.clone());
            let handle = state.register();
            let mut last: Option<pb::IdentityUpdate> = None;
            loop {
                let now = current.borrow_and_update().clone();
                match now {
                    Current::Ready(p) => {
                        if last.as_ref() != Some(&p.update) {
                            if tx.send(Ok(p.update.clone())).await.is_err() {
                                return;
                            }
                            state
                                .metrics
                                .updates_sent
                                .get_or_create(&ApiLabel { api: "identity" })
                                .inc();
                            last = Some(p.update.clone());
                        }
                    }
                    Current::Off(why) => {
                        let _ = tx
                            .send(Err(Status::unavailable(format!("identity is off: {why}"))))
                            .await;
                        return;
                    }
                }
                tokio::select! {
                    changed = current.changed() => if changed.is_err() { return },
                    msg = reports.message() => match msg {
                        Ok(Some(r)) => handle.report(&r),
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!("identity watch stream ended: {e}");
                            return;
                        }
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
