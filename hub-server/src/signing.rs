//! Signed CDN URLs and Xet read tokens: an HMAC-SHA256 over what they grant and until
//! when, with a key that lives as long as the server (as a CDN's key pair outlives its
//! URLs, but a restart here invalidates them all).

use hmac::{Hmac, KeyInit, Mac};
use neuromfa_hub::hashing::hex;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub(crate) struct Signer {
    key: [u8; 32],
}

/// Why a signature or token was refused, or that it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Valid,
    Expired,
    Invalid,
}

impl Signer {
    /// A key no client can guess: the process, the time and a fresh allocation's address.
    pub(crate) fn new() -> Self {
        let mut h = Sha256::new();
        h.update(std::process::id().to_le_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.update(now.as_nanos().to_le_bytes());
        let marker = Box::new(0u8);
        h.update((&*marker as *const u8 as usize).to_le_bytes());
        Signer {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, scope: &str, expires: u64) -> HmacSha256 {
        // A 32-byte key is always accepted.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(scope.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The signature of `scope` (a URL path, a token's grant) valid until `expires`.
    pub(crate) fn sign(&self, scope: &str, expires: u64) -> String {
        hex(&self.mac(scope, expires).finalize().into_bytes())
    }

    /// Whether `signature` signs `scope` until `expires`, at Unix time `now`.
    pub(crate) fn check(&self, scope: &str, expires: u64, signature: &str, now: u64) -> Check {
        let Some(bytes) = unhex(signature) else {
            return Check::Invalid;
        };
        if self.mac(scope, expires).verify_slice(&bytes).is_err() {
            return Check::Invalid;
        }
        if now >= expires {
            Check::Expired
        } else {
            Check::Valid
        }
    }

    /// A bearer token granting `scope` until `expires`: `<expires>.<scope>.<signature>`
    /// (the scope in the clear, so a token can be checked without knowing what it grants).
    pub(crate) fn token(&self, scope: &str, expires: u64) -> String {
        format!("{expires}.{scope}.{}", self.sign(scope, expires))
    }

    /// What `token` grants and whether it holds at `now`.
    pub(crate) fn check_token<'t>(&self, token: &'t str, now: u64) -> (Option<&'t str>, Check) {
        let parts = token.split_once('.').and_then(|(expires, rest)| {
            Some((expires.parse::<u64>().ok()?, rest.rsplit_once('.')?))
        });
        match parts {
            Some((expires, (scope, signature))) => {
                (Some(scope), self.check(scope, expires, signature, now))
            }
            None => (None, Check::Invalid),
        }
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_hold_until_they_expire_and_only_for_their_scope() {
        let signer = Signer::new();
        let sig = signer.sign("/repos/a/b/123", 1000);
        assert_eq!(
            signer.check("/repos/a/b/123", 1000, &sig, 999),
            Check::Valid
        );
        assert_eq!(
            signer.check("/repos/a/b/123", 1000, &sig, 1000),
            Check::Expired
        );
        assert_eq!(
            signer.check("/repos/a/b/124", 1000, &sig, 10),
            Check::Invalid
        );
        assert_eq!(
            signer.check("/repos/a/b/123", 2000, &sig, 10),
            Check::Invalid
        );
        assert_eq!(
            signer.check("/repos/a/b/123", 1000, "zz", 10),
            Check::Invalid
        );
        assert_eq!(
            Signer::new().check("/repos/a/b/123", 1000, &sig, 10),
            Check::Invalid,
            "another server's key"
        );
        let token = signer.token("xet-read a/b.c", 50);
        assert_eq!(
            signer.check_token(&token, 49),
            (Some("xet-read a/b.c"), Check::Valid)
        );
        assert_eq!(signer.check_token(&token, 50).1, Check::Expired);
        let forged = token.replace("a/b.c", "a/b.d");
        assert_eq!(signer.check_token(&forged, 1).1, Check::Invalid);
        assert_eq!(signer.check_token("nonsense", 1), (None, Check::Invalid));
    }
}
