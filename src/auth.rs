//! The sweep token: the interceptors that send and check it on every call are the
//! protocol's ([`neuromfa_proto::auth`]); a coordinator whose spec names none makes one.

pub use neuromfa_proto::auth::RequireToken;

/// A random token for a sweep that names none, for a coordinator listening on `listen`:
/// 32 hex digits from `fill` (the OS generator, [`os_random`]). Without OS randomness a
/// token from the clock and process id could be guessed, which only a coordinator that
/// nothing but this machine can dial may accept; any other refuses to start.
pub fn generate_token(
    listen: &str,
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    if let Err(e) = fill(&mut bytes) {
        if !is_loopback(listen) {
            anyhow::bail!(
                "no OS randomness ({e}) to make a sweep token for a coordinator listening on {listen}: \
                 set one with the spec's `token` or NEUROMFA_TOKEN (e.g. from another machine's \
                 `head -c 16 /dev/urandom | od -An -tx1`), or listen on 127.0.0.1 only"
            );
        }
        let seed = crate::server::now_ms() ^ u64::from(std::process::id()) << 32;
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        tracing::warn!(error = %e, "no OS randomness: the sweep token comes from the clock and process id (acceptable on loopback only)");
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `address` (`host:port`, or a URL) names only this machine.
pub fn is_loopback(address: &str) -> bool {
    let host_port = address.split_once("://").map_or(address, |(_, rest)| rest);
    let host_port = host_port.split('/').next().unwrap_or_default();
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(host, _)| host);
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    fn loopback_addresses_are_told_apart() {
        for address in [
            "127.0.0.1:1",
            "http://127.0.0.1:50051",
            "https://localhost:50051",
            "http://[::1]:50051/",
            "[::1]:0",
        ] {
            assert!(is_loopback(address), "{address}");
        }
        for address in [
            "0.0.0.0:1",
            "https://login1:50051",
            "[::]:5",
            "http://10.1.2.3:50051",
        ] {
            assert!(!is_loopback(address), "{address}");
        }
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
