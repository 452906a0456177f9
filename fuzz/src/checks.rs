//! The properties the fuzz targets check. Shared by path with the stable
//! replay of the checked-in corpus (`shared/tests/fuzz_corpus.rs`), so both
//! check exactly the same thing.

use larder_core::nix::content_address::ContentAddress;
use larder_core::nix::nar::{NarError, NarSummary, NarValidator};
use larder_core::nix::narinfo::NarInfo;

/// Feeds `data` in pieces whose sizes come from `next_size`.
fn feed(data: &[u8], mut next_size: impl FnMut() -> usize) -> Result<NarSummary, NarError> {
    let mut v = NarValidator::with_listing();
    let mut rest = data;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(next_size().clamp(1, rest.len()));
        v.update(piece)?;
        rest = tail;
    }
    v.finish()
}

/// Validates `data` whole, one byte at a time and in pseudo-random pieces
/// (seeded by the data): the verdicts must agree, and a valid NAR's size and
/// listing must be consistent.
pub fn nar_validate(data: &[u8]) {
    let whole = feed(data, || usize::MAX);
    let bytewise = feed(data, || 1);
    // splitmix64 seeded with FNV-1a of the input: deterministic per input.
    let mut state = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let random = feed(data, || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        // Mostly small pieces, sometimes large ones.
        ((z ^ (z >> 31)) % 97) as usize + 1
    });
    assert_eq!(whole, bytewise, "verdict depends on split points");
    assert_eq!(whole, random, "verdict depends on split points");
    match whole {
        Ok(summary) => {
            assert_eq!(summary.nar_size, data.len() as u64);
            let listing = summary.listing.expect("a valid NAR has a listing");
            assert!(
                listing
                    .to_json()
                    .starts_with(br#"{"version":1,"root":{"type":"#)
            );
        }
        Err(e) => assert!(e.offset() <= data.len() as u64, "{e:?} is past the end"),
    }
}

/// Parses `data` as a narinfo; whatever parses must render to a text that
/// parses back to the same value and store directory.
pub fn narinfo_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((info, store_dir)) = NarInfo::parse(text) else {
        return;
    };
    let rendered = info.render(&store_dir);
    let (again, again_dir) = NarInfo::parse(&rendered).expect("a rendered narinfo parses");
    assert_eq!(again, info);
    assert_eq!(again_dir, store_dir);
    assert_eq!(again.render(&again_dir), rendered);
}

/// Parses `data` as a content address; whatever parses must print to
/// Nix's canonical form, which parses back to the same value and prints
/// identically.
pub fn content_address_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ca) = text.parse::<ContentAddress>() else {
        return;
    };
    let printed = ca.to_string();
    let again: ContentAddress = printed.parse().expect("a printed content address parses");
    assert_eq!(again, ca);
    assert_eq!(again.to_string(), printed);
}
