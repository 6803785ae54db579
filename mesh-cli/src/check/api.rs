//! `kubernetes-api` (MESH10xx): the kubeconfig gives a client, the API server answers, and
//! its version is one the mesh supports.
//!
//! Supported: Kubernetes 1.32 and newer (what the mesh is built against: k8s-openapi's
//! `v1_32`). 1.29 to 1.31 get a warning (not supported, but every API the mesh uses exists
//! there, native sidecars included). Older than 1.29 fails: native sidecars, which the mesh
//! uses by default, are not on by default there.

use k8s_openapi::apimachinery::pkg::version::Info;

use super::cluster::{self, Cluster};
use super::codes;
use super::report::Outcome;

/// The oldest Kubernetes version the mesh supports.
pub const SUPPORTED: (u32, u32) = (1, 32);
/// The oldest version the mesh can run on at all with its defaults (native sidecars on by
/// default).
pub const MINIMUM: (u32, u32) = (1, 29);

/// `major.minor` of the server, from `/version` (`"29+"` as some providers write it counts
/// as 29; `gitVersion` when major/minor are empty).
pub fn parse_version(info: &Info) -> Option<(u32, u32)> {
    fn leading(s: &str) -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
    if let (Some(major), Some(minor)) = (leading(&info.major), leading(&info.minor)) {
        return Some((major, minor));
    }
    let git = info.git_version.trim_start_matches('v');
    let mut parts = git.split('.');
    Some((leading(parts.next()?)?, leading(parts.next()?)?))
}

/// MESH1001: the outcome of building the client.
pub fn client_outcome(result: &Result<Cluster, String>) -> Outcome {
    match result {
        Ok(c) => Outcome::ok(&codes::CLIENT, format!("server {}", c.url)),
        Err(e) => Outcome::error(
            &codes::CLIENT,
            e.clone(),
            "give --kubeconfig FILE, set KUBECONFIG or write ~/.kube/config (and --context NAME \
             for a context other than the current one); `kubectl config view` shows what is used",
        ),
    }
}

/// MESH1002 and MESH1003: asks `/version`. `Err` carries the failed MESH1002 outcome.
pub async fn reach(cluster: &Cluster) -> Result<(Outcome, Outcome, (u32, u32)), Outcome> {
    let info = cluster::timed("GET /version", cluster.client.apiserver_version())
        .await
        .map_err(|e| {
            Outcome::error(
                &codes::API_REACHABLE,
                format!(
                    "cannot reach the API server at {}: {}",
                    cluster.url,
                    cluster::api_error(&e)
                ),
                "check that the cluster is running and that the kubeconfig's server address and \
                 credentials are right (`kubectl cluster-info` uses the same)",
            )
        })?;
    let reached = Outcome::ok(
        &codes::API_REACHABLE,
        format!("Kubernetes {}", info.git_version),
    );
    let Some(version) = parse_version(&info) else {
        return Err(Outcome::error(
            &codes::API_REACHABLE,
            format!(
                "the API server at {} answers /version without a readable version (major {:?}, \
                 minor {:?}, gitVersion {:?})",
                cluster.url, info.major, info.minor, info.git_version
            ),
            "check that the kubeconfig points at a Kubernetes API server",
        ));
    };
    Ok((reached, version_outcome(version), version))
}

/// MESH1003 for a server version.
pub fn version_outcome((major, minor): (u32, u32)) -> Outcome {
    let v = format!("{major}.{minor}");
    let supported = format!("{}.{}", SUPPORTED.0, SUPPORTED.1);
    if (major, minor) >= SUPPORTED {
        Outcome::ok(
            &codes::SERVER_VERSION,
            format!("{v} (supported: {supported} and newer)"),
        )
    } else if (major, minor) >= MINIMUM {
        Outcome::warning(
            &codes::SERVER_VERSION,
            format!(
                "Kubernetes {v} is not supported: the mesh is built and tested for {supported} \
                 and newer (the APIs it uses exist on {v})"
            ),
            format!("upgrade the cluster to Kubernetes {supported} or newer"),
        )
    } else {
        Outcome::error(
            &codes::SERVER_VERSION,
            format!(
                "Kubernetes {v} is not supported: the mesh needs {supported} or newer (at the \
                 very least {}.{}, where native sidecar containers are on by default)",
                MINIMUM.0, MINIMUM.1
            ),
            format!("upgrade the cluster to Kubernetes {supported} or newer"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::Status;
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git.into(),
            ..Info::default()
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version(&info("1", "32", "")), Some((1, 32)));
        assert_eq!(parse_version(&info("1", "29+", "")), Some((1, 29)));
        assert_eq!(parse_version(&info("", "", "v1.30.2-gke.1")), Some((1, 30)));
        assert_eq!(parse_version(&info("", "", "nope")), None);
        assert_eq!(version_outcome((1, 33)).status, Status::Ok);
        assert_eq!(version_outcome((1, 30)).status, Status::Warning);
        assert_eq!(version_outcome((1, 28)).status, Status::Error);
        assert_eq!(version_outcome((2, 0)).status, Status::Ok);
    }
}
