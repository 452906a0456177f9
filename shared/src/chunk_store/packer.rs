//! Group commit of small ingests into one shared pack per process.
//!
//! An ingest whose new chunks are few (a small NAR, or the tail of a large
//! one) must not produce a tiny storage object. It hands its frames, as one
//! contiguous run, to the process's open shared pack and waits until that
//! pack is sealed; every ingest that joined the pack then commits its own
//! transaction. The pack is sealed when it reaches `[storage] pack-size`,
//! when no ingest that could still join is running (so a lone push never
//! waits), or [`LINGER`] after it opened, whichever comes first.
//!
//! The protocol of docs/gc.md is the caller's, as for its own packs: it
//! [`Packer::reserve`]s the open pack (which keeps it from being sealed),
//! commits its write intent on the pack's key, checks for claims, and only
//! then [`Reservation::append`]s. A pack whose joiners all failed is still
//! sealed if anything was appended; their intents age and GC deletes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Mutex, watch};

use super::pack_writer::{PackWriter, SealedPack};
use crate::chunk::ChunkHash;
use crate::db::{Db, DbError, packs, unix_now};
use crate::pack::PackEntry;
use crate::storage::{Storage, StorageError};

/// Longest a shared pack stays open waiting for more joiners.
pub const LINGER: Duration = Duration::from_secs(2);

/// A sealed pack, or why sealing failed (shared by every joiner).
pub type SealResult = Result<SealedPack, Arc<str>>;

/// Why a run could not be placed in the shared pack.
#[derive(Debug, thiserror::Error)]
pub enum PackerError {
    /// No id could be allocated.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The pack's put failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Sealing the pack failed; the run is not stored.
    #[error("sealing the shared pack failed: {0}")]
    Seal(Arc<str>),
}

/// The process's shared pack.
pub struct Packer {
    storage: Arc<dyn Storage>,
    db: Db,
    target: u64,
    /// Ingests running that may still join (see [`Packer::join`]).
    active: AtomicUsize,
    open: Mutex<Option<Open>>,
}

struct Open {
    writer: PackWriter,
    reserved: usize,
    /// [`LINGER`] passed while reserved: seal when the last reservation ends.
    due: bool,
    sealed: watch::Sender<Option<SealResult>>,
}

/// A frame to place: the chunk's hash, uncompressed size and frame.
pub type Frame = (ChunkHash, u32, Bytes);

impl Packer {
    /// A packer writing to `storage`, sealing at `target` bytes.
    pub fn new(storage: Arc<dyn Storage>, db: Db, target: u64) -> Arc<Self> {
        Arc::new(Self {
            storage,
            db,
            target,
            active: AtomicUsize::new(0),
            open: Mutex::new(None),
        })
    }

    /// Registers an ingest that will probably hand a run over, so the pack
    /// waits for it (up to [`LINGER`]) instead of being sealed without it.
    pub fn join(self: &Arc<Self>) -> Joined {
        self.active.fetch_add(1, Ordering::SeqCst);
        Joined {
            packer: Some(self.clone()),
        }
    }

    /// Reserves a place in the open pack (opening one if none is), so it
    /// is not sealed before [`Reservation::append`]. Returns its id for the
    /// caller's write intent.
    pub async fn reserve(self: &Arc<Self>) -> Result<Reservation, PackerError> {
        let mut open = self.open.lock().await;
        let id = match open.as_mut() {
            Some(o) => {
                o.reserved += 1;
                o.writer.id()
            }
            None => {
                let id = {
                    let mut conn = self.db.conn().await?;
                    packs::next_id(conn.raw(), unix_now()).await?
                };
                let (sealed, _) = watch::channel(None);
                *open = Some(Open {
                    writer: PackWriter::open(self.storage.clone(), id),
                    reserved: 1,
                    due: false,
                    sealed,
                });
                let packer = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    packer.linger_elapsed(id).await;
                });
                id
            }
        };
        Ok(Reservation {
            packer: Some(self.clone()),
            id,
        })
    }

    async fn linger_elapsed(&self, id: i64) {
        let mut open = self.open.lock().await;
        match open.as_mut() {
            Some(o) if o.writer.id() == id && o.reserved > 0 => o.due = true,
            Some(o) if o.writer.id() == id => self.seal(&mut open),
            _ => {}
        }
    }

    /// Seals the open pack in the background if nothing keeps it open.
    fn seal_if_idle(&self, open: &mut Option<Open>) {
        let Some(o) = open.as_ref() else { return };
        let full = o.writer.len() >= self.target;
        let idle = o.reserved == 0 && (o.due || self.active.load(Ordering::SeqCst) == 0);
        if full && o.reserved == 0 || idle {
            self.seal(open);
        }
    }

    fn seal(&self, open: &mut Option<Open>) {
        let Some(o) = open.take() else { return };
        if o.writer.is_empty() {
            // Every reservation was cancelled: no joiner waits, store nothing.
            return;
        }
        tokio::spawn(async move {
            let result = o.writer.seal().await.map_err(|e| {
                tracing::warn!(error = %e, "sealing a shared pack failed");
                Arc::<str>::from(e.to_string())
            });
            o.sealed.send_replace(Some(result));
        });
    }
}

/// An ingest that may join the shared pack (see [`Packer::join`]); dropping
/// it (or [`Reservation::append`] with it) ends that.
pub struct Joined {
    packer: Option<Arc<Packer>>,
}

impl Joined {
    fn leave(&mut self) -> Option<Arc<Packer>> {
        let packer = self.packer.take()?;
        packer.active.fetch_sub(1, Ordering::SeqCst);
        Some(packer)
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(packer) = self.leave() {
            // The pack may have been waiting for this ingest alone.
            tokio::spawn(async move {
                let mut open = packer.open.lock().await;
                packer.seal_if_idle(&mut open);
            });
        }
    }
}

/// A reserved place in the open shared pack.
pub struct Reservation {
    packer: Option<Arc<Packer>>,
    id: i64,
}

impl Reservation {
    /// The pack's id (what the caller's write intent names).
    pub fn pack_id(&self) -> i64 {
        self.id
    }

    /// Appends `frames` contiguously and waits until the pack is sealed and
    /// durable. `joined`, if given, stops counting as a possible joiner.
    pub async fn append(
        mut self,
        frames: Vec<Frame>,
        joined: Option<Joined>,
    ) -> Result<(SealedPack, Vec<PackEntry>), PackerError> {
        let packer = self
            .packer
            .take()
            .ok_or(PackerError::Seal("no packer".into()))?;
        let (mut waiting, entries) = {
            let mut open = packer.open.lock().await;
            if let Some(mut j) = joined {
                j.leave();
            }
            let o = open
                .as_mut()
                .filter(|o| o.writer.id() == self.id)
                .ok_or(PackerError::Seal("the reserved pack was sealed".into()))?;
            o.reserved -= 1;
            let mut entries = Vec::with_capacity(frames.len());
            for (hash, size, frame) in frames {
                match o.writer.append(hash, size, frame).await {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        // The put is broken: drop the pack (its put fails;
                        // joiners waiting on it see the error).
                        if let Some(o) = open.take() {
                            o.sealed.send_replace(Some(Err(Arc::from(e.to_string()))));
                        }
                        return Err(e.into());
                    }
                }
            }
            let waiting = o.sealed.subscribe();
            packer.seal_if_idle(&mut open);
            (waiting, entries)
        };
        let sealed = waiting
            .wait_for(Option::is_some)
            .await
            .map_err(|_| PackerError::Seal("the pack was dropped".into()))?
            .clone();
        match sealed {
            Some(Ok(pack)) => Ok((pack, entries)),
            Some(Err(e)) => Err(PackerError::Seal(e)),
            None => Err(PackerError::Seal("unreachable: no seal result".into())),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(packer) = self.packer.take() else {
            return;
        };
        let id = self.id;
        tokio::spawn(async move {
            let mut open = packer.open.lock().await;
            if let Some(o) = open.as_mut().filter(|o| o.writer.id() == id) {
                o.reserved -= 1;
                packer.seal_if_idle(&mut open);
            }
        });
    }
}
