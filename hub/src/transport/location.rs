//! Where a file's bytes are read from, and until when: the signed URL of a `302` (the CDN,
//! the Xet bridge), or the resolve URL of a mirror that serves its bytes itself. A signed
//! URL is resolved again shortly before it ends, or when the CDN refuses it; concurrent
//! readers of a file share one renewal.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;

use super::{Resolution, Scope, Transport};
use crate::client::same_origin;
use crate::error::FetchError;
use crate::hashing::is_sha256_hex;

/// What a signed URL is taken to last when it does not say: the Hub signs for about an hour.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
/// Renew this long before the end at most (a tenth of the lifetime for short ones).
const RENEWAL_MARGIN: Duration = Duration::from_secs(60);

/// Where a file's bytes are, until when.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub(crate) url: Url,
    /// Resolve again from this instant on; `None` for the endpoint's own URL.
    renew_at: Option<Instant>,
    /// On the endpoint's origin: a mirror serving the bytes itself, which may see the token.
    pub(crate) own: bool,
}

impl Location {
    /// `url` as a resolve answer for the endpoint `base` gave it.
    pub(crate) fn new(url: Url, base: &Url) -> Self {
        let own = same_origin(&url, base);
        let renew_at = (!own).then(|| {
            let lifetime = signed_lifetime(&url, SystemTime::now());
            Instant::now() + lifetime - RENEWAL_MARGIN.min(lifetime / 10)
        });
        Location { url, renew_at, own }
    }

    fn due(&self, now: Instant) -> bool {
        self.renew_at.is_some_and(|at| now >= at)
    }
}

/// How long a signed URL holds from `now`: its `Expires` (a CloudFront URL: Unix seconds),
/// `X-Amz-Date` plus `X-Amz-Expires` (S3), or `exp`; else [`ASSUMED_LIFETIME`].
pub(crate) fn signed_lifetime(url: &Url, now: SystemTime) -> Duration {
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.into_owned())
    };
    let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let until = |unix: u64| Duration::from_secs(unix.saturating_sub(now_s));
    if let Some(unix) = param("expires")
        .or_else(|| param("exp"))
        .and_then(|v| v.parse::<u64>().ok())
    {
        return until(unix);
    }
    if let (Some(date), Some(secs)) = (param("x-amz-date"), param("x-amz-expires")) {
        if let (Some(signed), Ok(secs)) = (amz_date(&date), secs.parse::<u64>()) {
            return until(signed + secs);
        }
    }
    ASSUMED_LIFETIME
}

/// `20240102T030405Z` as Unix seconds.
fn amz_date(text: &str) -> Option<u64> {
    let digits = |r: std::ops::Range<usize>| text.get(r)?.parse::<u64>().ok();
    if text.len() != 16 || text.as_bytes()[8] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// A weight file at a pinned revision, as its resolve answer described it, with its current
/// location. Shared by every read of the file, from any thread.
#[derive(Debug)]
pub(crate) struct RemoteFile {
    pub(crate) name: String,
    pub(crate) size: u64,
    /// The blob name in the HF cache: the sha256 for an LFS file.
    pub(crate) etag: String,
    /// Stored in Xet: its location is the Xet bridge, which serves byte ranges too.
    pub(crate) xet_hash: Option<String>,
    /// What it is resolved at again.
    revision: String,
    /// The location and how many times it was renewed.
    current: Mutex<(Location, u64)>,
    /// Held while renewing, so that readers refused together renew once.
    renewing: tokio::sync::Mutex<()>,
}

impl RemoteFile {
    pub(crate) fn new(name: &str, revision: &str, resolution: Resolution) -> Self {
        RemoteFile {
            name: name.to_string(),
            size: resolution.size,
            etag: resolution.etag,
            xet_hash: resolution.xet_hash,
            revision: revision.to_string(),
            current: Mutex::new((resolution.location, 0)),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    /// The content's sha256, when the ETag is one (LFS files).
    pub(crate) fn sha256(&self) -> Option<&str> {
        is_sha256_hex(&self.etag).then_some(self.etag.as_str())
    }

    fn current(&self) -> (Location, u64) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The location to read from now and its generation: renewed first when due, or when
    /// `refused` names the generation the CDN refused.
    pub(crate) async fn location(
        &self,
        transport: &Transport,
        scope: &Scope,
        refused: Option<u64>,
    ) -> Result<(Location, u64), FetchError> {
        let (location, generation) = self.current();
        let stale = refused == Some(generation) || location.due(Instant::now());
        if !stale {
            return Ok((location, generation));
        }
        let _renewing = self.renewing.lock().await;
        let (location, current) = self.current();
        if current != generation {
            // Renewed by another reader meanwhile.
            return Ok((location, current));
        }
        tracing::debug!(file = %self.name, "resolving again: the signed location ends or was refused");
        let resolution = transport.resolve(scope, &self.revision, &self.name).await?;
        if resolution.size != self.size || resolution.etag != self.etag {
            return Err(FetchError::Hub {
                at: scope.names.at(&self.name),
                status: None,
                detail: format!(
                    "the file changed while it was read at {}: {} bytes with ETag {} became {} bytes with ETag {}",
                    self.revision, self.size, self.etag, resolution.size, resolution.etag
                ),
            });
        }
        let renewed = (resolution.location, generation + 1);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = renewed.clone();
        Ok(renewed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Url {
        Url::parse(u).unwrap()
    }

    #[test]
    fn a_signed_urls_end_is_read_from_its_query() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cloudfront = url("https://cdn-lfs.hf.co/repos/a/b/c?Expires=1700003600&Signature=x");
        assert_eq!(signed_lifetime(&cloudfront, now), Duration::from_secs(3600));
        let lower = url("http://127.0.0.1:9/f?expires=1700000005&sig=y");
        assert_eq!(signed_lifetime(&lower, now), Duration::from_secs(5));
        // 2023-11-14T22:13:20Z is 1_700_000_000.
        let s3 =
            url("https://cas-bridge.xethub.hf.co/x?X-Amz-Date=20231114T221320Z&X-Amz-Expires=600");
        assert_eq!(signed_lifetime(&s3, now), Duration::from_secs(600));
        let past = url("http://c/f?Expires=10");
        assert_eq!(signed_lifetime(&past, now), Duration::ZERO);
        let silent = url("https://cdn.example/f?token=abc");
        assert_eq!(signed_lifetime(&silent, now), ASSUMED_LIFETIME);
        assert_eq!(amz_date("19700101T000000Z"), Some(0));
        assert_eq!(amz_date("20240229T120000Z"), Some(1_709_208_000));
        assert_eq!(amz_date("2024-02-29"), None);
    }

    #[test]
    fn the_endpoints_own_url_is_never_renewed_and_a_signed_one_before_its_end() {
        let base = url("http://127.0.0.1:8000");
        let own = Location::new(url("http://127.0.0.1:8000/a/b/resolve/c/f"), &base);
        assert!(own.own);
        assert!(!own.due(Instant::now() + Duration::from_secs(1 << 30)));
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 20;
        let cdn = Location::new(
            url(&format!("http://127.0.0.1:8001/f?expires={expires}")),
            &base,
        );
        assert!(!cdn.own);
        assert!(!cdn.due(Instant::now()));
        // A tenth of its 20 s (at most) before the end, the location is due.
        assert!(cdn.due(Instant::now() + Duration::from_secs(19)));
    }
}
