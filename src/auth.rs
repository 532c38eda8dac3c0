//! The sweep token: the interceptors that send and check it on every call are the
//! protocol's ([`neuromfa_proto::auth`]); a coordinator whose spec names none makes one.

pub use neuromfa_proto::auth::RequireToken;

/// A random token for a sweep that names none: 32 hex digits from the OS generator.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to the clock and process id, still unguessable
        // enough for a loopback run and never empty.
        let seed = crate::server::now_ms() ^ u64::from(std::process::id()) << 32;
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_hex() {
        assert_eq!(generate_token().len(), 32);
        assert_ne!(generate_token(), generate_token());
    }
}
