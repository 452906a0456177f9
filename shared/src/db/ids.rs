//! Typed row ids: a NAR's id, a chunk's, a cache's and an object's are all
//! `BIGINT`s, but passing one where another is meant is always a bug, so
//! each is its own type. They bind, decode and serialize exactly as the
//! bare `i64` (`#[sqlx(transparent)]`, `#[serde(transparent)]`).

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            sqlx::Type,
            serde::Serialize,
            serde::Deserialize,
        )]
        #[sqlx(transparent)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            /// The raw number (for encodings, job payloads and logs).
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// `nars.id`: a distinct NAR, shared by caches; not a chunk's, cache's
    /// or object's id, which the type keeps it from being mixed up with.
    NarId
);
id_type!(
    /// `chunks.id`: what NAR chunk lists hold; cannot be mixed up with a
    /// NAR's or an object's id.
    ChunkId
);
id_type!(
    /// `caches.id`: the tenant every object, key and pin belongs to; cannot
    /// be mixed up with the ids of the rows it owns.
    CacheId
);
id_type!(
    /// `objects.id`: one store path in one cache; cannot be mixed up with
    /// the id of the NAR it names.
    ObjectId
);
