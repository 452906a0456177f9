//! Where an ingest's new chunks go when packs are on (`[storage] pack-size`
//! > 0): into packs, in NAR order, so a NAR's new chunks are contiguous.
//!
//! Frames are held back until a quarter pack has gathered (bounded memory,
//! whatever the NAR's size); past that the ingest opens a pack of its own and
//! streams into it, sealing it at `pack-size` and opening the next. What is
//! left at the end, less than a quarter pack, joins the process's shared
//! pack ([`larder_shared::chunk_store::packer`]), so small NARs and the tails
//! of large ones do not each make a small object.
//!
//! Every pack's key gets this run's write intent before a byte of the run
//! goes into it (docs/gc.md, "Who may delete an object"): a pack the run
//! never commits is found through those intents and deleted by GC.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use bytes::Bytes;

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::pack_writer::{self, PackWriter, SealedPack};
use larder_shared::chunk_store::packer::{Frame, Joined};

use crate::services::Services;
use crate::write_intents::Writer;

/// New chunks placed in packs: where each frame lies, and the packs sealed.
#[derive(Default)]
pub(super) struct Placed {
    /// `(pack id, offset)` of each new chunk's frame.
    pub(super) locations: HashMap<ChunkHash, (i64, i64)>,
    /// The packs holding them, sealed and durable, by id (ascending: the
    /// order their rows are locked in).
    pub(super) packs: BTreeMap<i64, SealedPack>,
    /// Some went into the process's shared pack (whose runs commit as a
    /// group).
    pub(super) shared: bool,
}

pub(super) struct Placer<'a> {
    svc: &'a Services,
    writer: &'a Writer,
    target: u64,
    held: Vec<Frame>,
    held_bytes: u64,
    own: Option<PackWriter>,
    joined: Option<Joined>,
    placed: Placed,
}

impl<'a> Placer<'a> {
    /// A placer for one run; `small` registers the run with the shared pack
    /// at once (its whole NAR is smaller than what it holds back).
    pub(super) fn new(svc: &'a Services, writer: &'a Writer, target: u64, small: bool) -> Self {
        Self {
            svc,
            writer,
            target,
            held: Vec::new(),
            held_bytes: 0,
            own: None,
            joined: small.then(|| svc.packer.join()),
            placed: Placed::default(),
        }
    }

    /// Most bytes held back before the run opens a pack of its own.
    fn hold_limit(&self) -> u64 {
        self.target / 4
    }

    /// Places the next new chunk's frame.
    pub(super) async fn push(
        &mut self,
        hash: ChunkHash,
        chunk_size: u32,
        frame: Bytes,
    ) -> anyhow::Result<()> {
        if let Some(own) = self.own.as_mut() {
            let e = own.append(hash, chunk_size, frame).await?;
            self.placed
                .locations
                .insert(hash, (own.id(), e.offset as i64));
            if own.len() >= self.target {
                self.seal_own().await?;
            }
            return Ok(());
        }
        self.held_bytes += frame.len() as u64;
        self.held.push((hash, chunk_size, frame));
        if self.held_bytes > self.hold_limit() {
            let mut own = self.writer.open_pack(self.svc).await?;
            for (hash, size, frame) in std::mem::take(&mut self.held) {
                let e = own.append(hash, size, frame).await?;
                self.placed
                    .locations
                    .insert(hash, (own.id(), e.offset as i64));
            }
            self.held_bytes = 0;
            self.own = Some(own);
        }
        Ok(())
    }

    async fn seal_own(&mut self) -> anyhow::Result<()> {
        if let Some(own) = self.own.take() {
            let sealed = own.seal().await?;
            self.placed.packs.insert(sealed.id, sealed);
        }
        Ok(())
    }

    /// Seals the run's own pack and hands what is held to the shared pack;
    /// returns once every frame is durable.
    pub(super) async fn finish(mut self) -> anyhow::Result<Placed> {
        self.seal_own().await?;
        let joined = self.joined.take();
        if self.held.is_empty() {
            return Ok(self.placed);
        }
        let reservation = self.svc.packer.reserve().await?;
        let id = reservation.pack_id();
        self.writer
            .intend_keys(&self.svc.db, &[pack_writer::key(id)])
            .await?;
        let (sealed, entries) = reservation
            .append(std::mem::take(&mut self.held), joined)
            .await
            .context("placing chunks in the shared pack")?;
        for e in entries {
            self.placed
                .locations
                .insert(e.hash, (sealed.id, e.offset as i64));
        }
        self.placed.packs.insert(sealed.id, sealed);
        self.placed.shared = true;
        Ok(self.placed)
    }
}
