//! `meshctl uninstall`: prints, or with `--apply` deletes, every object `meshctl install`
//! created. The webhook configuration goes first (new pods stop being sent to a controller
//! that is going away), then every object labeled `app.kubernetes.io/part-of=mesh` of the
//! installed kinds (the rendered ones and any an older version left), the namespace last;
//! CRDs only with `--crds`.

use std::time::{Duration, Instant};

use mesh_manifests::Values;
use serde_json::Value;

use crate::apply;
use crate::args::UninstallArgs;
use crate::cluster::{self, Cluster};
use crate::error::{self, Problem};
use crate::kinds::{self, Kind, KINDS};

pub fn run(args: UninstallArgs) -> u8 {
    let Some(runtime) = crate::cluster::runtime() else {
        return 1;
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => 0,
        Err(p) => {
            error::print_all(&[p]);
            1
        }
    }
}

fn is_crd(kind: &Kind) -> bool {
    kind.kind == "CustomResourceDefinition"
}

/// The objects install renders for this namespace (certificates are placeholders: only
/// kinds and names matter here).
fn rendered(namespace: &str) -> Result<Vec<Value>, Problem> {
    let mut values = Values::defaults();
    values
        .set_string("namespace", namespace)
        .map_err(|e| Problem::input("--mesh-namespace", e.to_string()))?;
    mesh_manifests::certificates::fill(&mut values, &Default::default())
        .map_err(|e| Problem::input("certificates", e.to_string()))?;
    mesh_manifests::render(&values).map_err(|e| Problem::input("values", e.to_string()))
}

async fn run_async(args: UninstallArgs) -> Result<(), Problem> {
    let namespace = args.mesh_namespace.clone();
    let objects = rendered(&namespace)?;
    if !args.apply {
        let keep: Vec<Value> = objects
            .into_iter()
            .filter(|o| args.crds || Kind::of(o).is_none_or(|k| !is_crd(k)))
            .map(|o| {
                let (name, ns) = kinds::name_of(&o);
                let mut meta = serde_json::json!({"name": name});
                if !ns.is_empty() {
                    meta["namespace"] = ns.into();
                }
                serde_json::json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": meta})
            })
            .collect();
        if !args.crds {
            eprintln!("note: the CRDs are not listed; give --crds to delete them too (that deletes every object of their kinds)");
        }
        print!("{}", mesh_manifests::to_yaml(&keep));
        return Ok(());
    }
    let (cluster, _) = cluster::connect(
        args.cluster.kubeconfig.as_deref(),
        args.cluster.context.as_deref(),
    )
    .await?;
    let targets = targets(&cluster, &objects, &namespace, args.crds).await?;
    let mut deleted = Vec::new();
    for (kind, ns, name) in &targets {
        if apply::delete(&cluster, kind, ns, name).await? {
            eprintln!("{} deleted", kind.subject(ns, name));
            deleted.push((*kind, ns.clone(), name.clone()));
        }
    }
    if deleted.is_empty() {
        eprintln!("nothing to delete: the mesh is not installed in namespace \"{namespace}\"");
        return Ok(());
    }
    wait_gone(&cluster, &deleted, args.wait_timeout).await?;
    if !args.crds {
        eprintln!("the CRDs are kept (and the objects of their kinds); `meshctl uninstall --apply --crds` deletes them");
    }
    Ok(())
}

/// What to delete, in order: the webhook configuration, then each kind's mesh objects from
/// the last applied to the first, the namespace, then (with `crds`) the CRDs.
async fn targets(
    cluster: &Cluster,
    objects: &[Value],
    namespace: &str,
    crds: bool,
) -> Result<Vec<(&'static Kind, String, String)>, Problem> {
    let mut out: Vec<(&'static Kind, String, String)> = Vec::new();
    let push = |kind: &'static Kind, name: String, out: &mut Vec<_>| {
        let ns = if kind.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        if !out.iter().any(|(k, n, m): &(&Kind, String, String)| {
            std::ptr::eq(*k, kind) && *n == ns && *m == name
        }) {
            out.push((kind, ns, name));
        }
    };
    for kind in KINDS.iter().rev() {
        if (is_crd(kind) && !crds) || kind.kind == "Namespace" {
            continue;
        }
        // The rendered objects of this kind, then leftovers carrying the mesh's label.
        for obj in objects
            .iter()
            .filter(|o| Kind::of(o).is_some_and(|k| std::ptr::eq(k, kind)))
        {
            let name = kinds::name_of(obj).0.to_string();
            if is_crd(kind) && !installed_by_mesh(cluster, kind, &name).await? {
                continue;
            }
            push(kind, name, &mut out);
        }
        for name in apply::labeled(cluster, kind, namespace).await? {
            push(kind, name, &mut out);
        }
    }
    if let Some(ns_kind) = KINDS.iter().find(|k| k.kind == "Namespace") {
        push(ns_kind, namespace.to_string(), &mut out);
    }
    // CRDs last: the objects above never need them, and users' objects go with them.
    out.sort_by_key(|(k, _, _)| is_crd(k));
    Ok(out)
}

/// A CRD the mesh installed carries its label; Gateway API CRDs someone else installed do not.
async fn installed_by_mesh(cluster: &Cluster, kind: &Kind, name: &str) -> Result<bool, Problem> {
    Ok(apply::get(cluster, kind, "", name).await?.is_some_and(|o| {
        o.pointer("/metadata/labels/app.kubernetes.io~1part-of") == Some(&Value::from("mesh"))
    }))
}

async fn wait_gone(
    cluster: &Cluster,
    deleted: &[(&'static Kind, String, String)],
    timeout: Duration,
) -> Result<(), Problem> {
    let deadline = Instant::now() + timeout;
    let progress = crate::progress::Progress::stderr();
    let step = progress.step("the deleted objects to be gone");
    loop {
        let mut left = Vec::new();
        for (kind, ns, name) in deleted {
            if apply::get(cluster, kind, ns, name).await?.is_some() {
                left.push(kind.subject(ns, name));
            }
        }
        if left.is_empty() {
            step.done();
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = format!("{} still there: {}", left.len(), left.join(", "));
            step.failed(&why);
            return Err(Problem::input(
                "uninstall",
                format!(
                    "{why}; look at their finalizers (kubectl get -o yaml) and run uninstall again"
                ),
            ));
        }
        step.detail(&format!("{} left", left.len()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
