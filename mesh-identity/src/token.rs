//! Local-mode join tokens: a random secret given to one workload, stored by the controller
//! only as its SHA-256 (`sha256:<hex>`), compared in constant time.

/// The prefix of every join token, so that a leaked token is recognisable.
pub const PREFIX: &str = "mjt_";

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A new join token: `mjt_` followed by 32 random bytes in URL-safe base64 (no padding).
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", base64_encode(&bytes, URL_SAFE, false))
}

/// The stored form of a token: `sha256:<hex of SHA-256 of the token text>`.
pub fn hash(token: &str) -> String {
    format!("sha256:{}", crate::hex(&crate::sha256(token.as_bytes())))
}

/// Whether `token` hashes to `hash` (as made by [`hash`]); the comparison takes the same
/// time wherever the first difference is. Hex digits compare case-insensitively.
pub fn matches(token: &str, hash: &str) -> bool {
    let expected = self::hash(token);
    let given = hash.trim().to_ascii_lowercase();
    if expected.len() != given.len() {
        return false;
    }
    expected
        .bytes()
        .zip(given.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Base64 of `data` with `alphabet`, with or without `=` padding.
pub(crate) fn base64_encode(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_url_safe_and_prefixed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        assert!(a[PREFIX.len()..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn hash_and_match() {
        let t = generate();
        let h = hash(&t);
        assert!(h.starts_with("sha256:"));
        assert_eq!(h.len(), "sha256:".len() + 64);
        assert!(matches(&t, &h));
        assert!(matches(
            &t,
            &h.to_ascii_uppercase().replace("SHA256", "sha256")
        ));
        assert!(!matches(&generate(), &h));
        assert!(!matches(&t, "sha256:00"));
        assert!(!matches(&t, ""));
        assert_eq!(
            hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn base64_known_values() {
        let std = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        assert_eq!(base64_encode(b"", std, true), "");
        assert_eq!(base64_encode(b"f", std, true), "Zg==");
        assert_eq!(base64_encode(b"fo", std, true), "Zm8=");
        assert_eq!(base64_encode(b"foo", std, true), "Zm9v");
        assert_eq!(base64_encode(b"foobar", std, true), "Zm9vYmFy");
        assert_eq!(base64_encode(&[0xfb, 0xff], URL_SAFE, false), "-_8");
    }
}
