//! Byte ranges and validators for immutable representations (RFC 9110
//! §13.1, §14): what lets Nix resume a broken NAR download (it retries with
//! `Range: bytes=N-` only after seeing `Accept-Ranges: bytes`) and lets a
//! shared cache revalidate.
//!
//! Only single ranges are served; a multi-range request gets the whole body
//! (allowed by RFC 9110 §14.2), and so does a malformed `Range` header.

use std::fmt;
use std::ops::Range;

use axum::http::{HeaderMap, HeaderValue, header};

/// A strong entity tag naming one byte sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// A strong tag from an opaque identity (a content hash). `tag` must be
    /// visible ASCII without `"`; hashes in base32 or hex are.
    pub fn strong(tag: impl fmt::Display) -> Self {
        Self(format!("\"{tag}\""))
    }

    /// The header value, quotes included.
    pub fn header_value(&self) -> HeaderValue {
        // Built from hashes only: always a valid header value.
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
    }

    fn matches_strong(&self, candidate: &str) -> bool {
        candidate == self.0
    }

    fn matches_weak(&self, candidate: &str) -> bool {
        candidate.strip_prefix("W/").unwrap_or(candidate) == self.0
    }
}

/// What to send for a GET or HEAD of a representation of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `If-None-Match` matched: 304, no body.
    NotModified,
    /// 200 with the whole body.
    Whole,
    /// 206 with these bytes.
    Partial(Range<u64>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Applies `If-None-Match`, `If-Range` and `Range` in the order RFC 9110
/// §13.2.2 gives them.
pub fn decide(headers: &HeaderMap, len: u64, etag: &ETag) -> Decision {
    if let Some(inm) = header_str(headers, header::IF_NONE_MATCH) {
        let hit = inm
            .split(',')
            .map(str::trim)
            .any(|c| c == "*" || etag.matches_weak(c));
        if hit {
            return Decision::NotModified;
        }
    }
    let Some(range) = header_str(headers, header::RANGE) else {
        return Decision::Whole;
    };
    if let Some(if_range) = header_str(headers, header::IF_RANGE) {
        // A date never matches: Larder sends no Last-Modified.
        if !etag.matches_strong(if_range.trim()) {
            return Decision::Whole;
        }
    }
    match parse_range(range, len) {
        Parsed::Ignore => Decision::Whole,
        Parsed::Satisfiable(r) => Decision::Partial(r),
        Parsed::Unsatisfiable => Decision::Unsatisfiable,
    }
}

/// `Content-Range` of a 206.
pub fn content_range(range: &Range<u64>, len: u64) -> HeaderValue {
    let value = format!(
        "bytes {}-{}/{len}",
        range.start,
        range.end.saturating_sub(1)
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

/// `Content-Range` of a 416.
pub fn unsatisfied_range(len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{len}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Malformed, another unit, or several ranges: send the whole body.
    Ignore,
    Satisfiable(Range<u64>),
    Unsatisfiable,
}

fn parse_range(value: &str, len: u64) -> Parsed {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return Parsed::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Parsed::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Parsed::Ignore;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => Parsed::Unsatisfiable,
            Some(_) if len == 0 => Parsed::Unsatisfiable,
            Some(n) => Parsed::Satisfiable(len.saturating_sub(n)..len),
            None => Parsed::Ignore,
        },
        // `a-`: from a to the end.
        (false, true) => match number(first) {
            Some(a) if a < len => Parsed::Satisfiable(a..len),
            Some(_) => Parsed::Unsatisfiable,
            None => Parsed::Ignore,
        },
        // `a-b`, inclusive; b past the end is clamped.
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a > b => Parsed::Ignore,
            (Some(a), Some(_)) if a >= len => Parsed::Unsatisfiable,
            (Some(a), Some(b)) => Parsed::Satisfiable(a..b.saturating_add(1).min(len)),
            _ => Parsed::Ignore,
        },
        (true, true) => Parsed::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_forms() {
        let s = Parsed::Satisfiable;
        for (value, expected) in [
            ("bytes=0-0", s(0..1)),
            ("bytes=0-99", s(0..100)),
            ("bytes=10-", s(10..100)),
            ("bytes=99-", s(99..100)),
            ("bytes=-1", s(99..100)),
            ("bytes=-500", s(0..100)),
            ("bytes=50-1000", s(50..100)),
            ("BYTES = 5-6", s(5..7)),
            ("bytes=100-", Parsed::Unsatisfiable),
            ("bytes=100-200", Parsed::Unsatisfiable),
            ("bytes=-0", Parsed::Unsatisfiable),
            ("bytes=5-4", Parsed::Ignore),
            ("bytes=0-1,5-6", Parsed::Ignore),
            ("bytes=x-", Parsed::Ignore),
            ("bytes=-", Parsed::Ignore),
            ("bytes=+1-2", Parsed::Ignore),
            ("items=0-1", Parsed::Ignore),
            ("0-1", Parsed::Ignore),
        ] {
            assert_eq!(parse_range(value, 100), expected, "{value}");
        }
        assert_eq!(parse_range("bytes=-1", 0), Parsed::Unsatisfiable);
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn validators() {
        let tag = ETag::strong("abc");
        let d = |pairs: &[(header::HeaderName, &str)]| decide(&headers(pairs), 10, &tag);
        assert_eq!(d(&[]), Decision::Whole);
        assert_eq!(
            d(&[(header::IF_NONE_MATCH, "\"x\", W/\"abc\"")]),
            Decision::NotModified
        );
        assert_eq!(d(&[(header::IF_NONE_MATCH, "*")]), Decision::NotModified);
        assert_eq!(d(&[(header::IF_NONE_MATCH, "\"x\"")]), Decision::Whole);
        let range = (header::RANGE, "bytes=2-");
        assert_eq!(d(std::slice::from_ref(&range)), Decision::Partial(2..10));
        assert_eq!(
            d(&[range.clone(), (header::IF_RANGE, "\"abc\"")]),
            Decision::Partial(2..10)
        );
        assert_eq!(
            d(&[range.clone(), (header::IF_RANGE, "\"other\"")]),
            Decision::Whole
        );
        assert_eq!(
            d(&[range.clone(), (header::IF_RANGE, "W/\"abc\"")]),
            Decision::Whole
        );
        assert_eq!(
            d(&[range, (header::IF_RANGE, "Wed, 21 Oct 2015 07:28:00 GMT")]),
            Decision::Whole
        );
        assert_eq!(d(&[(header::RANGE, "bytes=10-")]), Decision::Unsatisfiable);
        assert_eq!(content_range(&(2..10), 10), "bytes 2-9/10");
        assert_eq!(unsatisfied_range(10), "bytes */10");
    }
}
