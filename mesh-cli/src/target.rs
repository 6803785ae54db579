//! Live workload names on the command line (`deploy/web`, `deployment.apps/web`) and the
//! kinds meshctl reads from a cluster.

use std::path::Path;

/// A kind meshctl knows in a cluster.
#[derive(Debug, PartialEq, Eq)]
pub struct LiveKind {
    pub kind: &'static str,
    /// `v1` or `group/version`.
    pub api_version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// Names accepted before the `/` (besides kind and plural, lowercase).
    pub short: &'static [&'static str],
    /// Why it cannot be injected in place, if it cannot.
    pub immutable: Option<&'static str>,
}

impl LiveKind {
    pub fn group(&self) -> &'static str {
        self.api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }

    /// The collection's URL path, in `namespace` for namespaced kinds.
    pub fn collection_path(&self, namespace: &str) -> String {
        let base = if self.api_version.contains('/') {
            format!("/apis/{}", self.api_version)
        } else {
            format!("/api/{}", self.api_version)
        };
        if self.namespaced {
            format!("{base}/namespaces/{namespace}/{}", self.plural)
        } else {
            format!("{base}/{}", self.plural)
        }
    }
}

const POD_IMMUTABLE: &str = "the containers of an existing Pod cannot be changed; VERB its \
    workload instead (e.g. deploy/NAME), or re-create the Pod from YAML: kubectl get pod NAME \
    -o yaml | meshctl COMMAND - | kubectl replace --force -f -";
const JOB_IMMUTABLE: &str = "the pod template of an existing Job cannot be changed; VERB the \
    CronJob that creates it, or re-create the Job from YAML: kubectl get job NAME -o yaml | \
    meshctl COMMAND - | kubectl replace --force -f -";

/// Why a kind cannot be changed in place, worded for the operation (`inject` or
/// `uninject`) and the object's name.
pub fn immutable_reason(kind: &LiveKind, verb: &str, name: &str) -> Option<String> {
    let command = if verb == "inject" {
        "inject --manual"
    } else {
        verb
    };
    kind.immutable.map(|why| {
        why.replace("VERB", verb)
            .replace("COMMAND", command)
            .replace("NAME", name)
    })
}

pub const DEPLOYMENT: LiveKind = LiveKind {
    kind: "Deployment",
    api_version: "apps/v1",
    plural: "deployments",
    namespaced: true,
    short: &["deploy"],
    immutable: None,
};
pub const STATEFULSET: LiveKind = LiveKind {
    kind: "StatefulSet",
    api_version: "apps/v1",
    plural: "statefulsets",
    namespaced: true,
    short: &["sts"],
    immutable: None,
};
pub const DAEMONSET: LiveKind = LiveKind {
    kind: "DaemonSet",
    api_version: "apps/v1",
    plural: "daemonsets",
    namespaced: true,
    short: &["ds"],
    immutable: None,
};
pub const REPLICASET: LiveKind = LiveKind {
    kind: "ReplicaSet",
    api_version: "apps/v1",
    plural: "replicasets",
    namespaced: true,
    short: &["rs"],
    immutable: None,
};
pub const CRONJOB: LiveKind = LiveKind {
    kind: "CronJob",
    api_version: "batch/v1",
    plural: "cronjobs",
    namespaced: true,
    short: &["cj"],
    immutable: None,
};
pub const JOB: LiveKind = LiveKind {
    kind: "Job",
    api_version: "batch/v1",
    plural: "jobs",
    namespaced: true,
    short: &[],
    immutable: Some(JOB_IMMUTABLE),
};
pub const POD: LiveKind = LiveKind {
    kind: "Pod",
    api_version: "v1",
    plural: "pods",
    namespaced: true,
    short: &["po"],
    immutable: Some(POD_IMMUTABLE),
};
pub const NAMESPACE: LiveKind = LiveKind {
    kind: "Namespace",
    api_version: "v1",
    plural: "namespaces",
    namespaced: false,
    short: &["ns"],
    immutable: None,
};

/// Every kind a KIND/NAME may name.
pub const KINDS: [&LiveKind; 8] = [
    &DEPLOYMENT,
    &STATEFULSET,
    &DAEMONSET,
    &REPLICASET,
    &CRONJOB,
    &JOB,
    &POD,
    &NAMESPACE,
];

/// The kinds `--all` lists, in this order.
pub const ALL: [&LiveKind; 6] = [
    &DEPLOYMENT,
    &STATEFULSET,
    &DAEMONSET,
    &REPLICASET,
    &CRONJOB,
    &JOB,
];

/// A live object named on the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: &'static LiveKind,
    pub name: String,
}

/// The kind a KIND (as before the `/`) names: `deploy`, `deployment`, `deployments`,
/// `deployment.apps`, any case.
pub fn kind_named(word: &str) -> Option<&'static LiveKind> {
    let word = word.to_ascii_lowercase();
    let (word, group) = match word.split_once('.') {
        Some((w, g)) => (w.to_string(), Some(g.to_string())),
        None => (word, None),
    };
    KINDS.into_iter().find(|k| {
        let names = word == k.kind.to_ascii_lowercase()
            || word == k.plural
            || k.short.contains(&word.as_str());
        let group_ok = match &group {
            None => true,
            Some(g) => g == k.group(),
        };
        names && group_ok
    })
}

/// Reads an argument as KIND/NAME when it has that shape, names a known kind, and is not a
/// path that exists (a file wins).
pub fn parse(arg: &str) -> Option<Result<Target, String>> {
    let (kind, name) = arg.split_once('/')?;
    if Path::new(arg).exists() {
        return None;
    }
    let kind = kind_named(kind)?;
    if !is_name(name) {
        return Some(Err(format!(
            "{arg}: '{name}' is not a Kubernetes object name (lowercase letters, digits, '-' \
             and '.'); write KIND/NAME such as deploy/web"
        )));
    }
    Some(Ok(Target {
        kind,
        name: name.to_string(),
    }))
}

/// A DNS subdomain name, as Kubernetes object names are.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_every_name() {
        for (word, kind) in [
            ("deploy", "Deployment"),
            ("Deployment", "Deployment"),
            ("deployments.apps", "Deployment"),
            ("sts", "StatefulSet"),
            ("ds", "DaemonSet"),
            ("rs", "ReplicaSet"),
            ("cronjob.batch", "CronJob"),
            ("job", "Job"),
            ("pod", "Pod"),
            ("ns", "Namespace"),
        ] {
            assert_eq!(kind_named(word).map(|k| k.kind), Some(kind), "{word}");
        }
        assert!(kind_named("deploy.batch").is_none());
        assert!(kind_named("service").is_none());
    }

    #[test]
    fn targets_and_paths() {
        assert_eq!(
            parse("deploy/web").unwrap().unwrap(),
            Target {
                kind: &DEPLOYMENT,
                name: "web".into()
            }
        );
        assert!(parse("deploy/Web").unwrap().is_err());
        assert!(parse("manifests/web.yaml").is_none());
        assert!(parse("web.yaml").is_none());
        assert_eq!(
            DEPLOYMENT.collection_path("shop"),
            "/apis/apps/v1/namespaces/shop/deployments"
        );
        assert_eq!(NAMESPACE.collection_path("x"), "/api/v1/namespaces");
    }
}
