//! `webhook` (MESH13xx): the MutatingWebhookConfiguration `mesh-proxy-injector` exists and
//! points at the controller's Service, which has ready endpoints; the serving certificate
//! in Secret `mesh-webhook-tls` is valid now, belongs to its key, names the Service
//! (`mesh-controller.{namespace}.svc`, what the API server calls) and is signed by a CA of
//! the configuration's `caBundle`.

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

use super::certs::{self, Validity};
use super::cluster;
use super::report::Outcome;
use super::{codes, secret_text, Ctx, CONTROLLER, WEBHOOK_CONFIGURATION, WEBHOOK_SECRET};

/// The container port the webhook listens on, and the Service port name.
const WEBHOOK_PORT: i32 = 9443;
const WEBHOOK_PORT_NAME: &str = "webhook";

pub async fn run(ctx: &Ctx, out: &mut Vec<Outcome>) -> Option<String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    let ca_bundle = match cluster::get_opt(&api, "the webhook configuration", WEBHOOK_CONFIGURATION)
        .await
    {
        Ok(Some(config)) => match config_outcome(ctx, &config) {
            Ok((outcome, bundle)) => {
                out.push(outcome);
                bundle
            }
            Err(outcome) => {
                out.push(outcome);
                None
            }
        },
        Ok(None) => {
            out.push(Outcome::error(
                &codes::WEBHOOK_CONFIG,
                format!("MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION} does not exist: pods are not injected"),
                "install the mesh with meshctl install --apply (or meshctl upgrade --apply to restore it)",
            ));
            None
        }
        Err(e) => {
            out.push(Outcome::error(
                &codes::WEBHOOK_CONFIG,
                e,
                "check that your user may read mutatingwebhookconfigurations",
            ));
            None
        }
    };
    out.push(endpoints(ctx).await);
    certificate(ctx, ca_bundle, out).await
}

/// MESH1301: the configuration calls our Service; returns the caBundle PEM.
fn config_outcome(
    ctx: &Ctx,
    config: &MutatingWebhookConfiguration,
) -> Result<(Outcome, Option<String>), Outcome> {
    let fix = "restore it with meshctl upgrade --apply";
    let webhooks = config.webhooks.as_deref().unwrap_or_default();
    let Some(hook) = webhooks.first() else {
        return Err(Outcome::error(
            &codes::WEBHOOK_CONFIG,
            format!("{WEBHOOK_CONFIGURATION} has no webhooks"),
            fix,
        ));
    };
    let service = hook.client_config.service.as_ref();
    let target_ok = service.is_some_and(|s| s.name == CONTROLLER && s.namespace == ctx.mesh_ns);
    if !target_ok {
        let target = service
            .map(|s| format!("Service {}/{}", s.namespace, s.name))
            .or_else(|| hook.client_config.url.clone())
            .unwrap_or_else(|| "nothing".into());
        return Err(Outcome::error(
            &codes::WEBHOOK_CONFIG,
            format!(
                "{WEBHOOK_CONFIGURATION} calls {target}, not Service {}/{CONTROLLER}",
                ctx.mesh_ns
            ),
            format!("{fix} (or pass the mesh's namespace with --mesh-namespace)"),
        ));
    }
    let bundle = hook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    Ok((Outcome::ok(&codes::WEBHOOK_CONFIG, ""), bundle))
}

/// MESH1302.
async fn endpoints(ctx: &Ctx) -> Outcome {
    let hint = format!(
        "the Service has no ready controller pod behind it: see the install checks above and \
         kubectl -n {} get endpointslices -l kubernetes.io/service-name={CONTROLLER}",
        ctx.mesh_ns
    );
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    match cluster::get_opt(&services, "the controller Service", CONTROLLER).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Outcome::error(
                &codes::WEBHOOK_ENDPOINTS,
                format!(
                    "Service {CONTROLLER} does not exist in namespace {}",
                    ctx.mesh_ns
                ),
                "restore it with meshctl upgrade --apply",
            )
        }
        Err(e) => return Outcome::error(&codes::WEBHOOK_ENDPOINTS, e, hint),
    }
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    let selector = format!("kubernetes.io/service-name={CONTROLLER}");
    let slices = match cluster::list(
        &api,
        "the controller's EndpointSlices",
        &ListParams::default().labels(&selector),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return Outcome::error(&codes::WEBHOOK_ENDPOINTS, e, hint),
    };
    let mut ready = 0;
    for slice in &slices {
        let serves_webhook =
            slice.ports.iter().flatten().any(|p| {
                p.name.as_deref() == Some(WEBHOOK_PORT_NAME) || p.port == Some(WEBHOOK_PORT)
            });
        if !serves_webhook {
            continue;
        }
        ready += slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .count();
    }
    if ready == 0 {
        Outcome::error(
            &codes::WEBHOOK_ENDPOINTS,
            format!(
                "Service {CONTROLLER} has no ready endpoint for port {WEBHOOK_PORT_NAME}: the API \
                 server cannot call the webhook"
            ),
            hint,
        )
    } else {
        Outcome::ok(&codes::WEBHOOK_ENDPOINTS, format!("{ready} ready"))
    }
}

/// MESH1303, MESH1304 and MESH1305.
async fn certificate(
    ctx: &Ctx,
    ca_bundle: Option<String>,
    out: &mut Vec<Outcome>,
) -> Option<String> {
    let fix = format!(
        "renew it with meshctl upgrade --apply (which keeps Secret {WEBHOOK_SECRET} in step with \
         the caBundle)"
    );
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.mesh_ns);
    let secret = match cluster::get_opt(&api, "the webhook Secret", WEBHOOK_SECRET).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            out.push(Outcome::error(
                &codes::WEBHOOK_CERT_VALID,
                format!(
                    "Secret {WEBHOOK_SECRET} does not exist in namespace {}",
                    ctx.mesh_ns
                ),
                fix,
            ));
            return Some("there is no webhook certificate".into());
        }
        Err(e) => {
            out.push(Outcome::error(
                &codes::WEBHOOK_CERT_VALID,
                e,
                "check that your user may read secrets in the mesh namespace",
            ));
            return Some("the webhook certificate cannot be read".into());
        }
    };
    let parsed = (|| {
        let crt = secret_text(&secret, "tls.crt")?;
        let key = secret_text(&secret, "tls.key")?;
        let chain = certs::certs_from_pem(&crt, &format!("{WEBHOOK_SECRET} tls.crt"))?;
        let cert = certs::info(&chain[0], "the webhook certificate")?;
        if !certs::key_matches(&cert.der, &key)? {
            return Err(format!(
                "tls.key of {WEBHOOK_SECRET} is not the key of its tls.crt"
            ));
        }
        Ok(cert)
    })();
    let cert = match parsed {
        Ok(c) => c,
        Err(e) => {
            out.push(Outcome::error(&codes::WEBHOOK_CERT_VALID, e, fix));
            return Some("the webhook certificate cannot be read".into());
        }
    };
    let validity = certs::describe_validity(&cert, ctx.now);
    out.push(match certs::validity(&cert, ctx.now) {
        Validity::Valid(_) => Outcome::ok(&codes::WEBHOOK_CERT_VALID, validity),
        Validity::ExpiresSoon(_) => {
            Outcome::warning(&codes::WEBHOOK_CERT_VALID, validity, fix.clone())
        }
        Validity::Expired | Validity::NotYetValid => Outcome::error(
            &codes::WEBHOOK_CERT_VALID,
            format!("{validity}: the API server refuses to call the webhook"),
            fix.clone(),
        ),
    });
    let wanted = format!("{CONTROLLER}.{}.svc", ctx.mesh_ns);
    out.push(if cert.dns_names.iter().any(|n| n == &wanted) {
        Outcome::ok(&codes::WEBHOOK_CERT_NAME, wanted)
    } else {
        Outcome::error(
            &codes::WEBHOOK_CERT_NAME,
            format!(
                "its DNS names are [{}]; the API server calls {wanted}",
                cert.dns_names.join(", ")
            ),
            fix.clone(),
        )
    });
    out.push(ca_bundle_outcome(&cert.der, ca_bundle, &fix));
    None
}

fn ca_bundle_outcome(
    cert: &rustls_pki_types::CertificateDer<'static>,
    bundle: Option<String>,
    fix: &str,
) -> Outcome {
    let Some(bundle) = bundle.filter(|b| !b.trim().is_empty()) else {
        return Outcome::error(
            &codes::WEBHOOK_CA_BUNDLE,
            format!(
                "{WEBHOOK_CONFIGURATION} has no caBundle: the API server cannot verify the webhook"
            ),
            fix,
        );
    };
    // caBundle is base64 in the API; kube decodes it. Some tools store it encoded twice.
    let pem = if bundle.contains("-----BEGIN") {
        bundle
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(bundle.trim())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or(bundle)
    };
    let cas = match certs::certs_from_pem(&pem, "the caBundle") {
        Ok(c) => c,
        Err(e) => return Outcome::error(&codes::WEBHOOK_CA_BUNDLE, e, fix),
    };
    let mut problems = Vec::new();
    for ca in &cas {
        match certs::signed_by(cert, ca) {
            Ok(true) => return Outcome::ok(&codes::WEBHOOK_CA_BUNDLE, ""),
            Ok(false) => {}
            Err(e) => problems.push(e),
        }
    }
    let subjects: Vec<String> = cas
        .iter()
        .filter_map(|c| certs::info(c, "a caBundle certificate").ok())
        .map(|c| format!("'{}'", c.subject))
        .collect();
    let mut message = format!(
        "the webhook certificate is not signed by the caBundle's CA ({}): the API server \
         refuses the webhook's TLS",
        subjects.join(", ")
    );
    if !problems.is_empty() {
        message.push_str(&format!(" ({})", problems.join("; ")));
    }
    Outcome::error(&codes::WEBHOOK_CA_BUNDLE, message, fix)
}
