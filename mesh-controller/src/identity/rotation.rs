//! Trust-anchor rotation as a pure state machine.
//!
//! A rotation starts when the source has `next` material (a new anchor set and an issuer
//! signed by it) and goes through three phases, each waiting for every connected proxy:
//!
//! 1. `distributing`: the bundle is the current anchors plus the next ones; wait until every
//!    proxy holds that bundle.
//! 2. `reissuing`: leaves are signed by the next issuer, and updates name it so that proxies
//!    renew at once; wait until every proxy's leaf comes from the next issuer.
//! 3. `retiring`: the bundle is the next anchors only; wait until every proxy holds it.
//!
//! Then the next material is promoted to current (files renamed, or Secret keys moved) and the
//! phase is `idle` again. The phase reached is written next to the material (a marker), and
//! a proxy that reports being further along also moves the phase forward, so that a
//! controller restarted mid-rotation never goes back to a step proxies have already left.

use serde::Serialize;

/// Where a rotation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Idle,
    Distributing,
    Reissuing,
    Retiring,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Idle,
        Phase::Distributing,
        Phase::Reissuing,
        Phase::Retiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Distributing => "distributing",
            Phase::Reissuing => "reissuing",
            Phase::Retiring => "retiring",
        }
    }

    /// Parses a marker written by [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s.trim())
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one connected proxy last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// `TrustBundle.version` it verifies peers with (0: none).
    pub bundle_version: u64,
    /// SHA-256 of the issuer of its leaf (`None`: no leaf yet).
    pub leaf_issuer: Option<[u8; 32]>,
}

/// The facts about a rotation in progress that the phases compare reports with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Version of the bundle current + next anchors.
    pub both_version: u64,
    /// Version of the bundle of the next anchors only.
    pub next_version: u64,
    /// SHA-256 of the next issuer.
    pub next_issuer: [u8; 32],
}

/// What to do after looking at the reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Stay in this phase (waiting for proxies).
    Stay(Phase),
    /// Move to this phase.
    To(Phase),
    /// Every proxy is on the next material: promote it and go idle.
    Finish,
}

/// The phase to resume at: the recorded marker, or further if some proxy is already there
/// (never before `distributing` while there is next material).
pub fn resume(marker: Option<Phase>, rotation: &Rotation, proxies: &[Held]) -> Phase {
    let mut phase = marker
        .unwrap_or(Phase::Distributing)
        .max(Phase::Distributing);
    for p in proxies {
        // The bundle of next anchors only is only ever published in `retiring` (unless the
        // anchor sets are equal, which makes the phases indistinguishable anyway).
        if p.bundle_version == rotation.next_version
            && rotation.next_version != rotation.both_version
        {
            phase = phase.max(Phase::Retiring);
        }
        if p.leaf_issuer == Some(rotation.next_issuer) {
            phase = phase.max(Phase::Reissuing);
        }
    }
    phase
}

/// One step from `phase` given what the connected proxies hold. With no proxy connected
/// every wait is over at once.
pub fn step(phase: Phase, rotation: &Rotation, proxies: &[Held]) -> Step {
    match phase {
        Phase::Idle => Step::To(Phase::Distributing),
        Phase::Distributing => {
            if proxies
                .iter()
                .all(|p| p.bundle_version == rotation.both_version)
            {
                Step::To(Phase::Reissuing)
            } else {
                Step::Stay(phase)
            }
        }
        Phase::Reissuing => {
            if proxies
                .iter()
                .all(|p| p.leaf_issuer == Some(rotation.next_issuer))
            {
                Step::To(Phase::Retiring)
            } else {
                Step::Stay(phase)
            }
        }
        Phase::Retiring => {
            if proxies
                .iter()
                .all(|p| p.bundle_version == rotation.next_version)
            {
                Step::Finish
            } else {
                Step::Stay(phase)
            }
        }
    }
}

/// Which anchors are in the bundle and which issuer signs, in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub current_anchors: bool,
    pub next_anchors: bool,
    pub sign_with_next: bool,
}

pub fn plan(phase: Phase) -> Plan {
    match phase {
        Phase::Idle => Plan {
            current_anchors: true,
            next_anchors: false,
            sign_with_next: false,
        },
        Phase::Distributing => Plan {
            current_anchors: true,
            next_anchors: true,
            sign_with_next: false,
        },
        Phase::Reissuing => Plan {
            current_anchors: true,
            next_anchors: true,
            sign_with_next: true,
        },
        Phase::Retiring => Plan {
            current_anchors: false,
            next_anchors: true,
            sign_with_next: true,
        },
    }
}

/// `TrustBundle.version` of a set of anchors: the first 8 bytes (big-endian) of the SHA-256
/// of the sorted, de-duplicated anchor DERs concatenated. Derived from the content, so it
/// is the same after a controller restart; never 0 (which means "no bundle").
pub fn bundle_version<'a>(anchors: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    use sha2::{Digest, Sha256};
    let mut ders: Vec<&[u8]> = anchors.into_iter().collect();
    ders.sort_unstable();
    ders.dedup();
    let mut h = Sha256::new();
    for d in ders {
        h.update(d);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEXT: [u8; 32] = [2; 32];
    const OLD: [u8; 32] = [1; 32];
    const R: Rotation = Rotation {
        both_version: 20,
        next_version: 30,
        next_issuer: NEXT,
    };
    const CUR_VERSION: u64 = 10;

    fn held(v: u64, issuer: [u8; 32]) -> Held {
        Held {
            bundle_version: v,
            leaf_issuer: Some(issuer),
        }
    }

    #[test]
    fn walks_every_phase_waiting_for_each_proxy() {
        let mut proxies = vec![held(CUR_VERSION, OLD), held(CUR_VERSION, OLD)];
        let mut phase = resume(None, &R, &proxies);
        assert_eq!(phase, Phase::Distributing);
        assert_eq!(step(phase, &R, &proxies), Step::Stay(Phase::Distributing));
        proxies[0].bundle_version = 20;
        assert_eq!(step(phase, &R, &proxies), Step::Stay(Phase::Distributing));
        proxies[1].bundle_version = 20;
        assert_eq!(step(phase, &R, &proxies), Step::To(Phase::Reissuing));
        phase = Phase::Reissuing;
        proxies[0].leaf_issuer = Some(NEXT);
        assert_eq!(step(phase, &R, &proxies), Step::Stay(Phase::Reissuing));
        proxies[1].leaf_issuer = Some(NEXT);
        assert_eq!(step(phase, &R, &proxies), Step::To(Phase::Retiring));
        phase = Phase::Retiring;
        proxies[1].bundle_version = 30;
        assert_eq!(step(phase, &R, &proxies), Step::Stay(Phase::Retiring));
        proxies[0].bundle_version = 30;
        assert_eq!(step(phase, &R, &proxies), Step::Finish);
    }

    #[test]
    fn a_proxy_without_a_leaf_holds_reissuing() {
        let proxies = vec![Held {
            bundle_version: 20,
            leaf_issuer: None,
        }];
        assert_eq!(
            step(Phase::Reissuing, &R, &proxies),
            Step::Stay(Phase::Reissuing)
        );
    }

    #[test]
    fn no_proxies_means_no_wait() {
        assert_eq!(
            step(Phase::Distributing, &R, &[]),
            Step::To(Phase::Reissuing)
        );
        assert_eq!(step(Phase::Reissuing, &R, &[]), Step::To(Phase::Retiring));
        assert_eq!(step(Phase::Retiring, &R, &[]), Step::Finish);
    }

    #[test]
    fn resumes_never_backwards() {
        assert_eq!(resume(Some(Phase::Reissuing), &R, &[]), Phase::Reissuing);
        assert_eq!(resume(Some(Phase::Idle), &R, &[]), Phase::Distributing);
        assert_eq!(
            resume(None, &R, &[held(20, NEXT)]),
            Phase::Reissuing,
            "a proxy already on the next issuer"
        );
        assert_eq!(
            resume(Some(Phase::Distributing), &R, &[held(30, NEXT)]),
            Phase::Retiring,
            "a proxy already holding only the next anchors"
        );
    }

    #[test]
    fn plans() {
        assert!(!plan(Phase::Idle).next_anchors);
        let d = plan(Phase::Distributing);
        assert!(d.current_anchors && d.next_anchors && !d.sign_with_next);
        let r = plan(Phase::Reissuing);
        assert!(r.current_anchors && r.next_anchors && r.sign_with_next);
        let t = plan(Phase::Retiring);
        assert!(!t.current_anchors && t.next_anchors && t.sign_with_next);
    }

    #[test]
    fn versions_come_from_content() {
        let a: &[u8] = b"anchor-a";
        let b: &[u8] = b"anchor-b";
        assert_eq!(bundle_version([a, b]), bundle_version([b, a]));
        assert_eq!(bundle_version([a, b, a]), bundle_version([a, b]));
        assert_ne!(bundle_version([a]), bundle_version([a, b]));
        assert_ne!(bundle_version([a]), 0);
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
    }
}
