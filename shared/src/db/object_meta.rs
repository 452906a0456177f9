//! The metadata of an `objects` row (what a narinfo serves besides the NAR
//! fields), decoded into store-path types once, when the row is read.

use larder_core::nix::store_path::{AbsoluteStorePath, StorePath};

/// Path metadata as pushed (what narinfo serves besides the NAR fields),
/// decoded once when the row is read: a row that does not decode is
/// [`super::DbError::Corrupt`]. Signatures, content address and system stay text,
/// as [`larder_core::nix::narinfo::NarInfo`] keeps them: they are served
/// verbatim (an Attic import keeps what Attic had).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The store path, in the directory it was pushed under.
    pub store_path: AbsoluteStorePath,
    /// References, stored as base names.
    pub references: Vec<StorePath>,
    /// Deriver, stored as a base name.
    pub deriver: Option<StorePath>,
    /// Uploader's signatures.
    pub sigs: Vec<String>,
    /// Content address.
    pub ca: Option<String>,
    /// System.
    pub system: Option<String>,
}

/// Decodes the metadata columns of an `objects` row (a macro, as the row
/// type differs per database).
macro_rules! meta_from_row {
    ($r:expr) => {{
        let r = $r;
        let store_path: String = r.try_get("store_path")?;
        let refs: String = r.try_get("refs")?;
        let deriver: Option<String> = r.try_get("deriver")?;
        let sigs: String = r.try_get("sigs")?;
        Ok::<_, $crate::db::DbError>($crate::db::object_meta::ObjectMeta {
            store_path: store_path
                .parse()
                .map_err(|e| $crate::db::corrupt("objects.store_path", e))?,
            references: refs
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| $crate::db::corrupt("objects.refs", e))?,
            deriver: deriver
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| $crate::db::corrupt("objects.deriver", e))?,
            sigs: sigs.split_whitespace().map(str::to_owned).collect(),
            ca: r.try_get("ca")?,
            system: r.try_get("system")?,
        })
    }};
}
pub(crate) use meta_from_row;

/// The `refs` column: base names separated by spaces.
pub(crate) fn refs_column(references: &[StorePath]) -> String {
    references
        .iter()
        .map(StorePath::base_name)
        .collect::<Vec<_>>()
        .join(" ")
}
