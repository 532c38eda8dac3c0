//! The response headers the client reads from the Hub and its CDN, parsed strictly: each
//! parser takes a header's text and says what it means, or `None` for text that does not
//! follow the header's grammar. Every one is a fuzz target (`fuzz/`).

use std::time::Duration;

use neuromfa_common::budget::{Bucket, HubWindow, Quota};

/// The longest wait a server's answer is taken at its word for (`RateLimit`'s `t`,
/// `Retry-After`, a policy's window): the Hub's windows are five minutes, and a wait named
/// in the billions of seconds would otherwise stop a worker for good, or overflow the
/// instant it is added to.
pub const MAX_NAMED_WAIT: Duration = Duration::from_secs(3600);

/// `Content-Range: bytes FIRST-LAST/COMPLETE` (RFC 9110 §14.4), `COMPLETE` being `*` when
/// the server does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive, as the header writes it.
    pub last: u64,
    pub complete_length: Option<u64>,
}

impl ContentRange {
    /// Whether this is exactly `range` (end exclusive) of a `size`-byte file.
    pub fn is(&self, range: &std::ops::Range<u64>, size: u64) -> bool {
        Some(self.first) == Some(range.start)
            && range.end.checked_sub(1) == Some(self.last)
            && self.complete_length.is_none_or(|total| total == size)
    }
}

/// Parses a `Content-Range` of a `206` answer; `None` for anything else, the unsatisfied
/// form `bytes */N` included, and for ranges that end before they start or past the
/// complete length.
pub fn content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, complete) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (decimal(first)?, decimal(last)?);
    let complete_length = match complete {
        "*" => None,
        n => Some(decimal(n)?),
    };
    let within = complete_length.is_none_or(|n| last < n);
    (first <= last && within).then_some(ContentRange {
        first,
        last,
        complete_length,
    })
}

/// A number of ASCII digits only: `u64::from_str` would also take a sign.
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The opaque value of an `ETag` (or `X-Linked-Etag`): without its weak marker and quotes.
/// `None` when it is empty or holds characters no entity tag has (RFC 9110 §8.8.3: no
/// quotes, spaces or controls inside) or a path separator: the Hub's ETags are hashes,
/// and caches name files after them.
pub fn etag(value: &str) -> Option<String> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value.trim_matches('"');
    let allowed = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '/' | '\\');
    (!value.is_empty() && value.chars().all(allowed)).then(|| value.to_string())
}

/// `RateLimit: "resolvers";r=REMAINING;t=SECONDS` (the Hub's form of the IETF draft): the
/// bucket and its window, the wait capped at [`MAX_NAMED_WAIT`]. `None` without a known
/// bucket, `r` or `t`.
pub fn rate_limit(value: &str) -> Option<(Bucket, HubWindow)> {
    let fields = Fields(value);
    let bucket = fields.bucket()?;
    let remaining = fields.param("r")?;
    let resets_in = named_wait(fields.param("t")?);
    Some((
        bucket,
        HubWindow {
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            resets_in,
        },
    ))
}

/// `RateLimit-Policy: "fixed window";"resolvers";q=QUOTA;w=SECONDS`: the bucket and its
/// quota, the window capped at [`MAX_NAMED_WAIT`].
pub fn rate_limit_policy(value: &str) -> Option<(Bucket, Quota)> {
    let fields = Fields(value);
    let bucket = fields.bucket()?;
    Some((
        bucket,
        Quota {
            requests: u32::try_from(fields.param("q")?).unwrap_or(u32::MAX),
            window: named_wait(fields.param("w")?),
        },
    ))
}

/// `Retry-After` in seconds, capped at [`MAX_NAMED_WAIT`] (the HTTP-date form is not worth
/// a date parser here: the Hub sends `RateLimit` as well).
pub fn retry_after(value: &str) -> Option<Duration> {
    decimal(value.trim()).map(named_wait)
}

fn named_wait(seconds: u64) -> Duration {
    Duration::from_secs(seconds).min(MAX_NAMED_WAIT)
}

/// The quoted names and `key=number` parameters of a structured header such as
/// `"fixed window";"resolvers";q=5000;w=300`, read where they stand: nothing is collected,
/// so a header of a million separators costs no memory.
struct Fields<'a>(&'a str);

impl<'a> Fields<'a> {
    fn parts(&self) -> impl Iterator<Item = &'a str> {
        self.0.split([';', ',']).map(str::trim)
    }

    fn bucket(&self) -> Option<Bucket> {
        self.parts()
            .filter_map(quoted)
            .find_map(|n| n.parse::<Bucket>().ok())
    }

    fn param(&self, key: &str) -> Option<u64> {
        self.parts()
            .filter(|part| quoted(part).is_none())
            .filter_map(|part| part.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .and_then(|(_, v)| decimal(v.trim().trim_matches('"')))
    }
}

/// The text inside a quoted name, `"resolvers"`.
fn quoted(part: &str) -> Option<&str> {
    part.strip_prefix('"').and_then(|p| p.strip_suffix('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_follow_the_grammar() {
        let range = content_range("bytes 0-499/1234").unwrap();
        assert_eq!(
            (range.first, range.last, range.complete_length),
            (0, 499, Some(1234))
        );
        assert!(range.is(&(0..500), 1234));
        assert!(!range.is(&(0..500), 1235));
        assert_eq!(
            content_range("bytes 5-5/*").map(|r| r.complete_length),
            Some(None)
        );
        for bad in [
            "bytes */1234",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes +0-4/10",
            "bytes 0-4/-1",
            "items 0-4/10",
            "bytes 0-18446744073709551616/*",
            "bytes 0 -4/10",
        ] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn etags_lose_their_quotes_and_weak_marker() {
        assert_eq!(etag("W/\"abc123\"").as_deref(), Some("abc123"));
        assert_eq!(etag("\"abc\"").as_deref(), Some("abc"));
        assert_eq!(etag("abc").as_deref(), Some("abc"));
        for bad in [
            "", "\"\"", "W/\"\"", "\"a/b\"", "\"a b\"", "\"a\"b\"", "..\\x",
        ] {
            assert_eq!(etag(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_named_wait_is_taken_up_to_an_hour() {
        let (_, window) = rate_limit("\"api\";r=0;t=18446744073709551615").unwrap();
        assert_eq!(window.resets_in, MAX_NAMED_WAIT);
        // The instant it names can be reached without overflow.
        let _ = std::time::Instant::now() + window.resets_in;
        assert_eq!(retry_after("99999999999999999999"), None);
        assert_eq!(retry_after(" 18446744073709551615 "), Some(MAX_NAMED_WAIT));
        assert_eq!(retry_after("+12"), None);
        let (_, quota) = rate_limit_policy("\"resolvers\";q=5000;w=9999999").unwrap();
        assert_eq!(quota.window, MAX_NAMED_WAIT);
    }
}
