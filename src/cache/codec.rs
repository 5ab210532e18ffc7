//! Value encodings: compact binary by default, pluggable.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

/// Turns values into bytes and back. Implement it to store values in another format.
///
/// # Example
///
/// ```
/// use tower_rampart::cache::{Codec, Json, Postcard};
///
/// let bytes = Postcard.encode(&(7u32, "seven")).unwrap();
/// assert_eq!(Postcard.decode::<(u32, String)>(&bytes).unwrap().1, "seven");
/// assert_eq!(Json.encode(&[1, 2]).unwrap(), b"[1,2]");
/// ```
pub trait Codec: Send + Sync + 'static {
    /// Encodes a value.
    ///
    /// # Errors
    ///
    /// When the value cannot be represented in this format.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes a value.
    ///
    /// # Errors
    ///
    /// When the bytes are not a valid encoding of `T` (the cache then counts a miss and
    /// removes the entry).
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// The default codec: [postcard](https://docs.rs/postcard), a compact, stable binary
/// format (varints, no field names).
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        postcard::to_stdvec(value).map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        // Trailing bytes are an error: no value we encode has any, so an entry that
        // decodes from a prefix only (e.g. zeros read as an empty string) is corrupt.
        match postcard::take_from_bytes(bytes) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(CodecError(format!("{} trailing bytes", rest.len()))),
            Err(e) => Err(CodecError(e.to_string())),
        }
    }
}

/// JSON, for values that need `deserialize_any` (e.g. `serde_json::Value`, untagged
/// enums) or for stored entries readable by other languages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
    }
}

/// A value that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache codec: {}", self.0)
    }
}

impl std::error::Error for CodecError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip_and_reject_garbage() {
        let v = vec![("a".to_owned(), 1u64), ("b".to_owned(), u64::MAX)];
        let p = Postcard.encode(&v).unwrap();
        assert!(
            p.len() < Json.encode(&v).unwrap().len(),
            "postcard is compact"
        );
        assert_eq!(Postcard.decode::<Vec<(String, u64)>>(&p).unwrap(), v);
        let err = Postcard.decode::<String>(&[0xFF, 0xFF]).unwrap_err();
        assert!(err.to_string().starts_with("cache codec"));
        assert!(Json.decode::<u8>(b"nope").is_err());
        let err = Postcard.decode::<String>(&[0, 0, 0]).unwrap_err();
        assert!(err.to_string().contains("2 trailing bytes"), "{err}");
    }
}
