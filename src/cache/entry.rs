//! The stored form of an entry, shared by every backend and readable from Lua.
//!
//! ```text
//! rc1\n                    magic and format version
//! <tag> <version>\n        one line per tag: escaped tag name, decimal u64 version
//! \n                       end of the header
//! <flag><data>             the body: flag 0 = raw, 1 = zlib; data = the encoded value
//!                          (flags 2 and 3: the same, after an 8-byte big-endian Unix
//!                          time in ms past which the value is stale but may be served
//!                          while it is refreshed: `stale_while_revalidate`)
//! ```
//!
//! Tag names are escaped with [`crate::key::escape_part`], so they never contain a space
//! or a newline. The Redis scripts parse this header to validate tag versions in the same
//! round trip as the read.

use std::io::{Read as _, Write as _};

use bytes::Bytes;

/// The magic prefix of every stored entry.
pub(crate) const MAGIC: &[u8] = b"rc1\n";
const RAW: u8 = 0;
const ZLIB: u8 = 1;
/// `RAW` and `ZLIB` preceded by a soft expiry.
const SOFT: u8 = 2;
/// Largest decompressed body ever accepted, whatever the configured cap.
pub(crate) const MAX_BODY: usize = 64 << 20;

/// A decoded stored entry: its tags with versions, and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) tags: Vec<(String, u64)>,
    pub(crate) body: Bytes,
}

/// The wall clock in Unix milliseconds (shared by instances: soft expiries, `Age`).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a body is past its soft expiry (never, without one).
pub(crate) fn is_stale(body: &[u8]) -> bool {
    match body {
        [flag, deadline @ ..] if *flag & SOFT != 0 && deadline.len() >= 8 => {
            let mut ms = [0u8; 8];
            ms.copy_from_slice(&deadline[..8]);
            unix_ms() >= u64::from_be_bytes(ms)
        }
        _ => false,
    }
}

/// Frames an encoded value: compressed with zlib when longer than `threshold`, with a
/// soft expiry (Unix ms) when given.
pub(crate) fn frame(data: &[u8], threshold: usize, soft: Option<u64>) -> Bytes {
    let mut framed = plain_frame(data, threshold);
    if let Some(deadline) = soft {
        let mut out = Vec::with_capacity(framed.len() + 8);
        out.push(framed[0] | SOFT);
        out.extend_from_slice(&deadline.to_be_bytes());
        out.extend_from_slice(&framed[1..]);
        framed = out.into();
    }
    framed
}

fn plain_frame(data: &[u8], threshold: usize) -> Bytes {
    if data.len() > threshold {
        let mut enc = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(data.len() / 2 + 8),
            flate2::Compression::fast(),
        );
        if enc.write_all(data).is_ok()
            && let Ok(z) = enc.finish()
            && z.len() < data.len()
        {
            let mut out = Vec::with_capacity(z.len() + 1);
            out.push(ZLIB);
            out.extend_from_slice(&z);
            return out.into();
        }
    }
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(RAW);
    out.extend_from_slice(data);
    out.into()
}

/// The encoded value inside a body, decompressed; `None` when corrupt or longer than
/// `max` bytes. Inflation stops at `max + 1` bytes, so a decompression bomb costs at most
/// that much memory and time.
pub(crate) fn unframe(body: &[u8], max: usize) -> Option<std::borrow::Cow<'_, [u8]>> {
    let (&flag, mut data) = body.split_first()?;
    let max = max.min(MAX_BODY);
    let flag = if flag & SOFT == 0 {
        flag
    } else {
        data = data.get(8..)?;
        flag & !SOFT
    };
    match flag {
        RAW => (data.len() <= max).then_some(std::borrow::Cow::Borrowed(data)),
        ZLIB => {
            let mut out = Vec::new();
            let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
            let mut dec = flate2::read::ZlibDecoder::new(data).take(limit);
            dec.read_to_end(&mut out).ok()?;
            (out.len() <= max).then_some(std::borrow::Cow::Owned(out))
        }
        _ => None,
    }
}

/// Serialises a stored entry (the same bytes the Redis write script produces).
pub(crate) fn encode(tags: &[(String, u64)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + body.len() + tags.len() * 24);
    out.extend_from_slice(MAGIC);
    for (tag, version) in tags {
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(version.to_string().as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Parses a stored entry; `None` for anything malformed.
pub(crate) fn decode(raw: &Bytes) -> Option<Entry> {
    let rest = raw.strip_prefix(MAGIC)?;
    let mut pos = MAGIC.len();
    let mut tags = Vec::new();
    let mut rest = rest;
    loop {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        if nl == 0 {
            pos += 1;
            break;
        }
        let line = std::str::from_utf8(&rest[..nl]).ok()?;
        let (tag, version) = line.split_once(' ')?;
        if tag.is_empty() || tag.bytes().any(|b| !b.is_ascii_graphic()) {
            return None;
        }
        tags.push((tag.to_owned(), version.parse().ok()?));
        pos += nl + 1;
        rest = &rest[nl + 1..];
    }
    let body = raw.slice(pos..);
    body.first()
        .filter(|&&f| f & !SOFT == RAW || f & !SOFT == ZLIB)?;
    Some(Entry { tags, body })
}

/// Fuzzing entry point: decodes a stored entry and its body; never panics.
#[doc(hidden)]
pub fn __decode_for_fuzzing(data: &[u8]) -> Option<(usize, usize)> {
    let raw = Bytes::copy_from_slice(data);
    let entry = decode(&raw)?;
    let value = unframe(&entry.body, MAX_BODY)?;
    // Whatever decodes must re-encode to an equivalent entry.
    let again = decode(&Bytes::from(encode(&entry.tags, &entry.body)))?;
    assert_eq!(again, entry);
    Some((entry.tags.len(), value.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_bodies_stay_raw_large_ones_are_compressed() {
        let small = frame(b"abc", 16, None);
        assert_eq!(&small[..], b"\0abc");
        let big = vec![b'x'; 10_000];
        let framed = frame(&big, 16, None);
        assert_eq!(framed[0], ZLIB);
        assert!(framed.len() < 200);
        assert_eq!(unframe(&framed, 10_000).unwrap().as_ref(), &big[..]);
        assert!(unframe(&framed, 9_999).is_none(), "inflates past the cap");
        assert!(unframe(&small, 2).is_none(), "raw body past the cap");
        // Incompressible data above the threshold is kept raw.
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(frame(&noise, 8, None)[0], RAW);
        // A soft expiry: the same value, stale once the deadline is past.
        let soft = frame(&big, 16, Some(u64::MAX));
        assert_eq!(soft[0], ZLIB | SOFT);
        assert_eq!(unframe(&soft, 10_000).unwrap().as_ref(), &big[..]);
        assert!(!is_stale(&soft) && !is_stale(&framed));
        let past = frame(b"abc", 16, Some(1));
        assert!(is_stale(&past));
        assert_eq!(unframe(&past, 3).unwrap().as_ref(), b"abc");
        assert!(unframe(&[SOFT, 0, 0], 10).is_none(), "short deadline");
        assert!(unframe(&[], 10).is_none());
        assert!(unframe(&[9, 1], 10).is_none());
        assert!(unframe(&[ZLIB, 1, 2, 3], 10).is_none());
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let tags = vec![("users".to_owned(), 42), ("u%3A7".to_owned(), u64::MAX)];
        let raw = Bytes::from(encode(&tags, b"\0hello"));
        let e = decode(&raw).unwrap();
        assert_eq!(e.tags, tags);
        assert_eq!(&e.body[..], b"\0hello");
        for bad in [
            &b"xx"[..],
            b"rc1\nusers 1\n",
            b"rc1\nusers\n\n\0",
            b"rc1\nusers x\n\n\0",
            b"rc1\n\n",
            b"rc1\n\n\x07",
            b"rc1\n 1\n\n\0",
            b"rc1\n\xff 1\n\n\0",
        ] {
            assert!(decode(&Bytes::from_static(bad)).is_none(), "{bad:?}");
        }
        assert_eq!(__decode_for_fuzzing(&raw), Some((2, 5)));
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200),
                                               tags in proptest::collection::vec(("[a-z%0-9]{1,12}", any::<u64>()), 0..4),
                                               body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = __decode_for_fuzzing(&data);
            let framed = frame(&body, 32, None);
            let raw = Bytes::from(encode(&tags, &framed));
            let e = decode(&raw).unwrap();
            prop_assert_eq!(e.tags, tags);
            let value = unframe(&e.body, body.len()).unwrap();
            prop_assert_eq!(value.as_ref(), &body[..]);
        }
    }
}
