//! Nix's base32 ("nix32"), as implemented by `printHash32` / `parseHash32`
//! in Nix's `libutil/hash.cc`.
//!
//! It is not RFC 4648 base32: the alphabet omits `e`, `o`, `t` and `u`
//! (`0123456789abcdfghijklmnpqrsvwxyz`), there is no padding, and the digits
//! are emitted from the *last* 5-bit group of the little-endian bit string
//! to the first. Store path hashes, narinfo hashes and NAR URLs all use it.

use thiserror::Error;

/// The 32 digits, in value order.
const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Value of each ASCII byte as a digit, or `0xff` for a byte outside the
/// alphabet.
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a string is not the nix-base32 encoding of some bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Base32Error {
    /// No byte string encodes to this many digits (e.g. 1, 3 or 6).
    #[error("{len} is not the length of any nix-base32 string")]
    InvalidLength {
        /// Number of characters in the input.
        len: usize,
    },
    /// The length is valid, but not the one the caller asked for.
    #[error("nix-base32 string has {actual} characters, expected {expected}")]
    WrongLength {
        /// Characters the caller's type needs.
        expected: usize,
        /// Characters in the input.
        actual: usize,
    },
    /// A character outside the nix-base32 alphabet.
    #[error("invalid nix-base32 character {byte:#04x} at position {position}")]
    InvalidChar {
        /// The offending byte (a UTF-8 lead byte for non-ASCII input).
        byte: u8,
        /// Byte index in the input string.
        position: usize,
    },
    /// The first digit carries bits past the end of the decoded bytes, so
    /// the string is not the canonical encoding of anything.
    #[error("nix-base32 string has non-zero padding bits")]
    NonZeroPadding,
}

/// Number of nix-base32 characters needed for `n` bytes: `ceil(8n / 5)`.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Number of bytes a string of `len` nix-base32 characters decodes to, if
/// `len` is the length of a canonical encoding.
pub const fn decoded_len(len: usize) -> Option<usize> {
    let n = len * 5 / 8;
    if encoded_len(n) == len { Some(n) } else { None }
}

/// Encodes `bytes` as Nix prints hashes (`nix-hash --to-base32`).
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        let low = bytes[i] >> j;
        let high = match bytes.get(i + 1) {
            // `j` is at most 7 here, so the shift never overflows `u16`.
            Some(&next) => ((u16::from(next) << (8 - j)) & 0xff) as u8,
            None => 0,
        };
        out.push(char::from(ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    out
}

/// Decodes a nix-base32 string of any canonical length.
pub fn decode(s: &str) -> Result<Vec<u8>, Base32Error> {
    let n = decoded_len(s.len()).ok_or(Base32Error::InvalidLength { len: s.len() })?;
    let mut out = vec![0u8; n];
    decode_into(s.as_bytes(), &mut out)?;
    Ok(out)
}

/// Decodes a nix-base32 string into exactly `N` bytes (a hash), rejecting
/// every other length.
pub fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], Base32Error> {
    let expected = encoded_len(N);
    if s.len() != expected {
        return Err(Base32Error::WrongLength {
            expected,
            actual: s.len(),
        });
    }
    let mut out = [0u8; N];
    decode_into(s.as_bytes(), &mut out)?;
    Ok(out)
}

/// Checks that `s` is a canonical nix-base32 string (store path digests
/// are kept as validated text, not bytes).
pub fn validate(s: &str) -> Result<(), Base32Error> {
    decode(s).map(|_| ())
}

/// Decodes `input` (whose length is `encoded_len(out.len())`) into `out`,
/// which must start zeroed.
fn decode_into(input: &[u8], out: &mut [u8]) -> Result<(), Base32Error> {
    let last = input.len();
    for (position, &byte) in input.iter().enumerate() {
        let digit = DECODE[usize::from(byte)];
        if digit == 0xff {
            return Err(Base32Error::InvalidChar { byte, position });
        }
        // The last character holds the lowest 5 bits.
        let bit = (last - 1 - position) * 5;
        let i = bit / 8;
        let j = bit % 8;
        let wide = u16::from(digit) << j;
        // `i < out.len()` because `bit < 5 * len <= 8 * out.len() + 4`
        // and the lengths match; guard anyway rather than index blindly.
        let Some(slot) = out.get_mut(i) else {
            return Err(Base32Error::NonZeroPadding);
        };
        *slot |= (wide & 0xff) as u8;
        let carry = (wide >> 8) as u8;
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry,
            None if carry != 0 => return Err(Base32Error::NonZeroPadding),
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `nix-hash --type sha256 --to-base32` of SHA-256("").
    const SHA256_EMPTY_HEX: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const SHA256_EMPTY_B32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    /// SHA-256("abc"), the vector in Nix's own `tests/hash.cc`.
    const SHA256_ABC_HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const SHA256_ABC_B32: &str = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
    /// hello-2.10's NarHash from the cache.nixos.org signature vector.
    const HELLO_NAR_HASH: &str = "16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci";

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    #[test]
    fn known_vectors() {
        assert_eq!(encode(&unhex(SHA256_EMPTY_HEX)), SHA256_EMPTY_B32);
        assert_eq!(encode(&unhex(SHA256_ABC_HEX)), SHA256_ABC_B32);
        assert_eq!(decode(SHA256_EMPTY_B32).unwrap(), unhex(SHA256_EMPTY_HEX));
        assert_eq!(
            decode_array::<32>(SHA256_ABC_B32).unwrap().to_vec(),
            unhex(SHA256_ABC_HEX)
        );
    }

    #[test]
    fn hello_nar_hash_round_trips() {
        let bytes = decode_array::<32>(HELLO_NAR_HASH).unwrap();
        assert_eq!(encode(&bytes), HELLO_NAR_HASH);
    }

    #[test]
    fn store_path_digest_is_20_bytes() {
        // Store path hashes are 160-bit truncations printed as 32 chars.
        assert_eq!(encoded_len(20), 32);
        let bytes = decode_array::<20>("xcp9cav49dmsjbwdjlmkjxj10gkpx553").unwrap();
        assert_eq!(encode(&bytes), "xcp9cav49dmsjbwdjlmkjxj10gkpx553");
    }

    #[test]
    fn small_lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert_eq!(encode(&[0x00]), "00");
    }

    #[test]
    fn rejects_invalid_lengths() {
        for len in [1, 3, 6, 9, 11] {
            let s = "0".repeat(len);
            assert_eq!(decode(&s), Err(Base32Error::InvalidLength { len }), "{len}");
        }
        assert_eq!(
            decode_array::<32>(&SHA256_ABC_B32[1..]),
            Err(Base32Error::WrongLength {
                expected: 52,
                actual: 51
            })
        );
    }

    #[test]
    fn rejects_invalid_chars() {
        for bad in ['e', 'o', 't', 'u', 'A', '=', ' '] {
            let mut s = SHA256_ABC_B32.to_owned();
            s.replace_range(5..6, &bad.to_string());
            assert_eq!(
                decode(&s),
                Err(Base32Error::InvalidChar {
                    byte: bad as u8,
                    position: 5
                }),
                "{bad}"
            );
        }
        // Non-ASCII: a 2-byte character plus 50 digits passes the length check.
        let s = &format!("\u{e9}{}", "0".repeat(50));
        assert_eq!(s.len(), 52);
        assert!(matches!(
            decode(s),
            Err(Base32Error::InvalidChar { position: 0, .. })
        ));
    }

    #[test]
    fn rejects_non_zero_padding() {
        // 32 bytes = 256 bits in 52 digits = 260 bits: the first digit may
        // only use its lowest bit.
        assert!(decode_array::<32>(&format!("1{}", &SHA256_ABC_B32[1..])).is_ok());
        for first in ['2', '4', '8', 'g', 'z'] {
            let s = format!("{first}{}", &SHA256_ABC_B32[1..]);
            assert_eq!(decode(&s), Err(Base32Error::NonZeroPadding), "{first}");
        }
        // One byte in two digits: the first digit holds 3 bits.
        assert_eq!(decode("80"), Err(Base32Error::NonZeroPadding));
        assert_eq!(decode("70").unwrap(), vec![0xe0]);
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }

        #[test]
        fn round_trip_hash(bytes in any::<[u8; 32]>()) {
            let s = encode(&bytes);
            prop_assert_eq!(decode_array::<32>(&s).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(s in "[0-9a-z]{0,60}") {
            if let Ok(bytes) = decode(&s) {
                prop_assert_eq!(encode(&bytes), s);
            }
        }
    }
}
