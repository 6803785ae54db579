//! The identity directory of local mode (`identity init`): PEM files on disk.
//!
//! ```text
//! D/trust-anchors.pem   one or more anchor certificates (the trust bundle)
//! D/trust-anchor.key    the anchor's key, when we generated it (mode 0600)
//! D/issuer.crt          the issuer (and any further intermediates), signed by an anchor
//! D/issuer.key          the issuer's key, PKCS#8 PEM (mode 0600)
//! D/next/               optional, the same files: a new anchor and an issuer signed by it;
//!                       its presence drives trust-anchor rotation
//! D/previous/           the files a finished rotation replaced
//! ```
//!
//! Writes go to a temporary file in the same directory and are renamed into place, so a
//! crash never leaves a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ca::{anchors_from_pem, Anchor, Issuer};
use crate::Error;

/// The trust bundle file.
pub const ANCHORS_FILE: &str = "trust-anchors.pem";
/// The anchor's private key, present when the anchor was generated here.
pub const ANCHOR_KEY_FILE: &str = "trust-anchor.key";
/// The issuer certificate (chain).
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
/// The issuer's private key.
pub const ISSUER_KEY_FILE: &str = "issuer.key";
/// The sub-directory holding the next anchor and issuer during a rotation.
pub const NEXT_DIR: &str = "next";
/// The sub-directory receiving the files a rotation replaced.
pub const PREVIOUS_DIR: &str = "previous";

/// Lifetime of a generated trust anchor.
pub const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated issuer.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

const ALL_FILES: [&str; 4] = [
    ANCHORS_FILE,
    ANCHOR_KEY_FILE,
    ISSUER_CERT_FILE,
    ISSUER_KEY_FILE,
];

/// The contents of an identity directory.
#[derive(Clone, Debug)]
pub struct IdentityDir {
    /// The trust bundle; the anchor whose key is in `trust-anchor.key` carries it.
    pub anchors: Vec<Anchor>,
    /// The issuer the controller signs with.
    pub issuer: Issuer,
}

/// Loads `dir`, checking that the issuer chains to one of the anchors; errors name the
/// file at fault.
pub fn load(dir: &Path) -> Result<IdentityDir, Error> {
    let anchors_path = dir.join(ANCHORS_FILE);
    let mut anchors = anchors_from_pem(&read(&anchors_path)?).map_err(|e| at(&anchors_path, e))?;
    let key_path = dir.join(ANCHOR_KEY_FILE);
    if key_path.exists() {
        let key = read(&key_path)?;
        let mut attached = false;
        for slot in anchors.iter_mut() {
            if let Ok(with_key) = slot.clone().with_key_pem(&key) {
                *slot = with_key;
                attached = true;
                break;
            }
        }
        if !attached {
            return Err(Error::new(format!(
                "{}: this key belongs to none of the anchors in {}; restore the matching key \
                 or remove the file",
                key_path.display(),
                anchors_path.display()
            )));
        }
    }
    let cert_path = dir.join(ISSUER_CERT_FILE);
    let issuer_key_path = dir.join(ISSUER_KEY_FILE);
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&issuer_key_path)?;
    crate::ca::certs_from_pem(&cert_pem, "the issuer certificate")
        .map_err(|e| at(&cert_path, e))?;
    let issuer = Issuer::from_pem(&cert_pem, &key_pem).map_err(|e| {
        // Name the file the problem is in: the key when the key cannot be read or does not
        // belong to the certificate, else the certificate.
        let m = e.message();
        if m.contains("issuer key") || m.contains("private key") {
            at(&issuer_key_path, e)
        } else {
            at(&cert_path, e)
        }
    })?;
    issuer.chains_to(&anchors).map_err(|e| {
        Error::new(format!(
            "{} is not signed by an anchor of {}: {e}",
            cert_path.display(),
            anchors_path.display()
        ))
    })?;
    Ok(IdentityDir { anchors, issuer })
}

/// Loads `dir/next/` if it exists (a rotation is under way).
pub fn load_next(dir: &Path) -> Result<Option<IdentityDir>, Error> {
    let next = dir.join(NEXT_DIR);
    if !next.exists() {
        return Ok(None);
    }
    load(&next).map(Some)
}

/// Writes a fresh anchor (10 years) and issuer (1 year) into `dir`, refusing to overwrite
/// existing files unless `force`.
pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<IdentityDir, Error> {
    check_trust_domain(trust_domain)?;
    if !force {
        let existing: Vec<String> = ALL_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Error::new(format!(
                "refusing to overwrite {}; use --force to replace the identity (every \
                 workload certificate will then have to be renewed), or choose another \
                 directory",
                existing.join(", ")
            )));
        }
    }
    let generated = generate(trust_domain)?;
    write_dir(dir, &generated)?;
    Ok(generated)
}

/// Writes `dir/next/` with a new anchor and an issuer signed by it, to start a rotation.
/// Refuses if `dir/next/` already holds identity files.
pub fn init_next(dir: &Path, trust_domain: &str) -> Result<IdentityDir, Error> {
    check_trust_domain(trust_domain)?;
    let next = dir.join(NEXT_DIR);
    let existing: Vec<String> = ALL_FILES
        .iter()
        .map(|f| next.join(f))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(Error::new(format!(
            "a rotation is already prepared ({}); finish it or remove {} first",
            existing.join(", "),
            next.display()
        )));
    }
    let generated = generate(trust_domain)?;
    write_dir(&next, &generated)?;
    Ok(generated)
}

/// Ends a rotation: replaces the top-level files with `next/`'s (each by an atomic rename;
/// the old ones move to `dir/previous/`), then removes `next/`.
pub fn promote_next(dir: &Path) -> Result<(), Error> {
    let next = dir.join(NEXT_DIR);
    if !next.exists() {
        return Err(Error::new(format!(
            "{} does not exist: there is no rotation to finish",
            next.display()
        )));
    }
    load(&next).map_err(|e| e.context("cannot promote the next identity"))?;
    let previous = dir.join(PREVIOUS_DIR);
    std::fs::create_dir_all(&previous).map_err(|e| io_err(&previous, "create", e))?;
    for name in ALL_FILES {
        let current = dir.join(name);
        let saved = previous.join(name);
        let incoming = next.join(name);
        if current.exists() {
            if saved.exists() {
                std::fs::remove_file(&saved).map_err(|e| io_err(&saved, "remove", e))?;
            }
            if incoming.exists() {
                // Keep `current` in place until the rename below replaces it atomically.
                if std::fs::hard_link(&current, &saved).is_err() {
                    std::fs::copy(&current, &saved).map_err(|e| io_err(&saved, "write", e))?;
                }
            } else {
                std::fs::rename(&current, &saved).map_err(|e| io_err(&current, "move", e))?;
            }
        }
        if incoming.exists() {
            std::fs::rename(&incoming, &current).map_err(|e| io_err(&incoming, "move", e))?;
        }
    }
    std::fs::remove_dir_all(&next).map_err(|e| io_err(&next, "remove", e))?;
    Ok(())
}

fn check_trust_domain(trust_domain: &str) -> Result<(), Error> {
    crate::spiffe_id(trust_domain, "ns", "sa")
        .map(|_| ())
        .map_err(|e| e.context(format!("trust domain '{trust_domain}'")))
}

fn generate(trust_domain: &str) -> Result<IdentityDir, Error> {
    let anchor = Anchor::generate(
        &format!("mesh trust anchor {trust_domain}"),
        ANCHOR_LIFETIME,
    )?;
    let issuer = Issuer::generate(
        &anchor,
        &format!("mesh issuer {trust_domain}"),
        ISSUER_LIFETIME,
    )?;
    Ok(IdentityDir {
        anchors: vec![anchor],
        issuer,
    })
}

fn write_dir(dir: &Path, id: &IdentityDir) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create", e))?;
    let bundle: String = id.anchors.iter().map(|a| a.cert_pem()).collect();
    write_atomic(&dir.join(ANCHORS_FILE), bundle.as_bytes(), false)?;
    if let Some(key) = id.anchors.iter().find_map(|a| a.key_pem()) {
        write_atomic(&dir.join(ANCHOR_KEY_FILE), key.as_bytes(), true)?;
    }
    write_atomic(
        &dir.join(ISSUER_KEY_FILE),
        id.issuer.key_pem().as_bytes(),
        true,
    )?;
    write_atomic(
        &dir.join(ISSUER_CERT_FILE),
        id.issuer.cert_pem().as_bytes(),
        false,
    )?;
    Ok(())
}

/// Writes `data` to a temporary file next to `path` (mode 0600 when `secret`), syncs it
/// and renames it over `path`.
fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<(), Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, "write", e));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::new(format!(
                "{} is missing; create the identity directory with `identity init`",
                path.display()
            ))
        } else {
            io_err(path, "read", e)
        }
    })
}

fn at(path: &Path, e: Error) -> Error {
    e.context(path.display())
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::new(format!("cannot {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mesh-identity-{name}-{}-{}",
            std::process::id(),
            crate::hex(&rand::random::<[u8; 4]>())
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_then_load_round_trips() {
        let d = tempdir("roundtrip");
        let made = init(&d, "cluster.local", false).unwrap();
        let loaded = load(&d).unwrap();
        assert_eq!(loaded.anchors.len(), 1);
        assert_eq!(loaded.anchors[0].sha256(), made.anchors[0].sha256());
        assert!(loaded.anchors[0].has_key());
        assert_eq!(loaded.issuer.sha256(), made.issuer.sha256());
        assert_eq!(loaded.issuer.chains_to(&loaded.anchors).unwrap(), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [ISSUER_KEY_FILE, ANCHOR_KEY_FILE] {
                let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        assert!(load_next(&d).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn init_refuses_to_overwrite_unless_forced() {
        let d = tempdir("overwrite");
        let first = init(&d, "cluster.local", false).unwrap();
        let err = init(&d, "cluster.local", false).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert!(err.contains(ISSUER_KEY_FILE), "{err}");
        assert_eq!(load(&d).unwrap().issuer.sha256(), first.issuer.sha256());
        let second = init(&d, "cluster.local", true).unwrap();
        assert_ne!(second.issuer.sha256(), first.issuer.sha256());
        assert_eq!(load(&d).unwrap().issuer.sha256(), second.issuer.sha256());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn broken_issuer_key_names_the_file() {
        let d = tempdir("brokenkey");
        init(&d, "cluster.local", false).unwrap();
        std::fs::write(d.join(ISSUER_KEY_FILE), "not a key\n").unwrap();
        let err = load(&d).unwrap_err().to_string();
        assert!(
            err.contains(&d.join(ISSUER_KEY_FILE).display().to_string()),
            "{err}"
        );

        // A valid key of another issuer: also the key file is named.
        let other = tempdir("otherkey");
        init(&other, "cluster.local", false).unwrap();
        std::fs::copy(other.join(ISSUER_KEY_FILE), d.join(ISSUER_KEY_FILE)).unwrap();
        let err = load(&d).unwrap_err().to_string();
        assert!(
            err.contains(&d.join(ISSUER_KEY_FILE).display().to_string()),
            "{err}"
        );
        assert!(err.contains("does not belong"), "{err}");

        // An issuer from another directory: not signed by our anchor.
        std::fs::copy(other.join(ISSUER_CERT_FILE), d.join(ISSUER_CERT_FILE)).unwrap();
        let err = load(&d).unwrap_err().to_string();
        assert!(
            err.contains(ISSUER_CERT_FILE) && err.contains("not signed"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn missing_file_is_named() {
        let d = tempdir("missing");
        let err = load(&d).unwrap_err().to_string();
        assert!(
            err.contains(ANCHORS_FILE) && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn rotation_files() {
        let d = tempdir("rotation");
        let old = init(&d, "cluster.local", false).unwrap();
        let next = init_next(&d, "cluster.local").unwrap();
        assert!(init_next(&d, "cluster.local").is_err());
        let loaded_next = load_next(&d).unwrap().unwrap();
        assert_eq!(loaded_next.issuer.sha256(), next.issuer.sha256());
        // The next issuer does not chain to the old anchor, and vice versa.
        assert!(next.issuer.chains_to(&old.anchors).is_err());
        let both = [old.anchors.clone(), next.anchors.clone()].concat();
        assert_eq!(next.issuer.chains_to(&both).unwrap(), 1);
        promote_next(&d).unwrap();
        let now = load(&d).unwrap();
        assert_eq!(now.issuer.sha256(), next.issuer.sha256());
        assert_eq!(now.anchors[0].sha256(), next.anchors[0].sha256());
        assert!(load_next(&d).unwrap().is_none());
        let prev = load(&d.join(PREVIOUS_DIR)).unwrap();
        assert_eq!(prev.issuer.sha256(), old.issuer.sha256());
        assert!(promote_next(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
