//! The sweep token: the interceptors that send and check it on every call are the
//! protocol's ([`neuromfa_proto::auth`]); a coordinator whose spec names none makes one.

pub use neuromfa_proto::auth::RequireToken;

/// A random token for a sweep that names none, for a coordinator listening on `listen`:
/// 32 hex digits from `fill` (the OS generator, [`os_random`]).
pub fn generate_token(
    listen: &str,
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> anyhow::Result<String> {
    let _ = listen;
    let mut bytes = [0u8; 16];
    if fill(&mut bytes).is_err() {
        // No OS randomness: fall back to the clock and process id, still unguessable
        // enough for a loopback run and never empty.
        let seed = crate::server::now_ms() ^ u64::from(std::process::id()) << 32;
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The OS's random bytes.
pub fn os_random(bytes: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_hex() {
        let token = || generate_token("0.0.0.0:50051", os_random).unwrap();
        assert_eq!(token().len(), 32);
        assert_ne!(token(), token());
    }

    #[test]
    fn without_os_randomness_only_a_loopback_coordinator_gets_a_token() {
        let no_randomness = |_: &mut [u8]| Err(getrandom::Error::UNSUPPORTED);
        for listen in ["127.0.0.1:50051", "[::1]:0", "localhost:50051"] {
            let token = generate_token(listen, no_randomness).unwrap();
            assert_eq!(token.len(), 32, "{listen}");
        }
        for listen in [
            "0.0.0.0:50051",
            "10.1.2.3:50051",
            "[::]:50051",
            "login1:50051",
        ] {
            let refused = generate_token(listen, no_randomness)
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(listen) && refused.contains("randomness"),
                "{listen}: {refused}"
            );
        }
    }
}
