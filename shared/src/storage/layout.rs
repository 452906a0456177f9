//! Every storage key Larder writes, and its parser: chunk objects, packs,
//! staged uploads and the NAR files stock `nix copy` uploads. No other
//! module formats or parses a key, so a new kind of object is one function
//! here and the prefixes that listings walk are named once.

use larder_core::nix::hash::FileHash;
use larder_core::nix::narinfo::Compression;

use super::ObjectKey;
use crate::chunk::ChunkHash;

/// Prefix of chunk objects (what `verify` lists for orphans).
pub const CHUNKS: &str = "chunks/";
/// Prefix of staged uploads (what the sweeper lists).
pub const STAGING: &str = "staging/";

/// Where a chunk stored on its own keeps its zstd frame:
/// `chunks/ab/cd/abcd….zst`. Two levels of 256-way sharding keep
/// directories small up to billions of chunks on the local backend and
/// spread S3 key prefixes.
pub fn chunk_key(hash: &ChunkHash) -> ObjectKey {
    let hex = hash.to_string();
    ObjectKey::from_trusted(format!("{CHUNKS}{}/{}/{hex}.zst", &hex[0..2], &hex[2..4]))
}

/// The chunk a key written by [`chunk_key`] names; `None` for any other key
/// (another shape, or a hash spelt differently), which no chunk row can name.
pub fn parse_chunk_key(key: &str) -> Option<ChunkHash> {
    let name = key.strip_prefix(CHUNKS)?.rsplit('/').next()?;
    let hash: ChunkHash = name.strip_suffix(".zst")?.parse().ok()?;
    (chunk_key(&hash).as_str() == key).then_some(hash)
}

/// Prefix of chunk packs.
pub const PACKS: &str = "packs/";

/// The object of pack `id` (many chunks' frames back to back, see
/// [`crate::pack`]): `packs/<id mod 256, hex>/<id>.pack`, sharded so no
/// local directory holds more than a few thousand packs per TiB.
pub fn pack_key(id: i64) -> ObjectKey {
    ObjectKey::from_trusted(format!("{PACKS}{:02x}/{id}.pack", id & 0xff))
}

/// The pack a key written by [`pack_key`] names; `None` for any other key.
pub fn parse_pack_key(key: &str) -> Option<i64> {
    let name = key.strip_prefix(PACKS)?.rsplit('/').next()?;
    let id: i64 = name.strip_suffix(".pack")?.parse().ok()?;
    (id >= 0 && pack_key(id).as_str() == key).then_some(id)
}

/// A fresh key under `staging/`; random, so concurrent uploads never collide.
pub fn new_staging_key() -> ObjectKey {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    ObjectKey::from_trusted(format!("{STAGING}{id}.nar"))
}

/// A fresh key under `staging/` for one batch of chunk frames sent by
/// chunk-level push (`staging/<ulid>.chunks`); random like
/// [`new_staging_key`], and held the same way (a staging intent, then the
/// `pushed_chunks` rows locating its frames).
pub fn new_chunk_batch_key() -> ObjectKey {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    ObjectKey::from_trusted(format!("{STAGING}{id}.chunks"))
}

/// Where chunk-level push keeps a prepared NAR until its publish
/// (`staging/<hex>.prepared.nar`): `binding` hashes the cache, the token
/// subject, the NAR's hash and size and a random nonce, so only a publish
/// making the same claims with the nonce finds it. Held like a staged
/// upload: a staging intent, then the `nars` row the publish records.
pub fn prepared_nar_key(binding: &[u8; 32]) -> ObjectKey {
    let mut hex = String::with_capacity(64);
    for b in binding {
        hex.push_str(&format!("{b:02x}"));
    }
    ObjectKey::from_trusted(format!("{STAGING}{hex}{PREPARED_NAR_SUFFIX}"))
}

/// How every [`prepared_nar_key`] ends (what the sweeper expires sooner).
pub const PREPARED_NAR_SUFFIX: &str = ".prepared.nar";

/// Where a NAR file uploaded by stock Nix is kept: content-addressed by its
/// file hash and sharded like chunks, with the extension of its compression
/// (`uploads/ab/<filehash>.nar.xz`; gzip keeps `.gz`, which Nix omits).
pub fn upload_key(hash: &FileHash, compression: Compression) -> ObjectKey {
    let name = hash.to_base32();
    let ext = match compression {
        Compression::Gzip => ".gz",
        other => other.file_extension(),
    };
    ObjectKey::from_trusted(format!("uploads/{}/{name}.nar{ext}", &name[..2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_nothing_else_parses() {
        let hash = ChunkHash::of(b"x");
        let hex = hash.to_string();
        let key = chunk_key(&hash);
        assert_eq!(
            key.as_str(),
            format!("chunks/{}/{}/{hex}.zst", &hex[..2], &hex[2..4])
        );
        assert_eq!(parse_chunk_key(key.as_str()), Some(hash));
        assert_eq!(parse_chunk_key(&format!("chunks/00/00/{hex}.zst")), None);
        assert_eq!(parse_chunk_key(&format!("packs/ab/ab/{hex}.zst")), None);
        assert_eq!(
            parse_chunk_key(&format!("chunks/{}/{}/{hex}", &hex[..2], &hex[2..4])),
            None
        );
        assert_eq!(
            parse_chunk_key(&format!(
                "chunks/{}/{}/{}.zst",
                &hex[..2],
                &hex[2..4],
                hex.to_uppercase()
            )),
            None
        );
    }

    #[test]
    fn staging_keys_are_fresh_and_valid() {
        let (a, b) = (new_staging_key(), new_staging_key());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with(STAGING) && a.as_str().ends_with(".nar"));
        assert!(ObjectKey::new(a.as_str().to_owned()).is_ok());
    }

    #[test]
    fn upload_keys_are_sharded_and_typed() {
        let h = FileHash::digest(b"x");
        let b = h.to_base32();
        let key = upload_key(&h, Compression::Gzip);
        assert_eq!(key.as_str(), format!("uploads/{}/{b}.nar.gz", &b[..2]));
        assert!(ObjectKey::new(key.as_str().to_owned()).is_ok());
        assert!(
            upload_key(&h, Compression::Xz)
                .as_str()
                .ends_with(".nar.xz")
        );
        assert!(upload_key(&h, Compression::None).as_str().ends_with(".nar"));
        assert!(ObjectKey::new(pack_key(7).as_str().to_owned()).is_ok());
    }

    #[test]
    fn pack_keys_round_trip_and_nothing_else_parses() {
        assert_eq!(pack_key(7).as_str(), "packs/07/7.pack");
        assert_eq!(pack_key(0x1ff).as_str(), "packs/ff/511.pack");
        assert_eq!(parse_pack_key("packs/ff/511.pack"), Some(511));
        for bad in [
            "packs/fe/511.pack",
            "packs/ff/0511.pack",
            "packs/ff/511",
            "chunks/ff/511.pack",
            "packs/ff/-1.pack",
        ] {
            assert_eq!(parse_pack_key(bad), None, "{bad}");
        }
    }
}
