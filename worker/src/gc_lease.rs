//! The GC lease, held by whoever deletes storage objects: a GC run, or
//! `verify` while it runs. One holder cluster-wide means one deleter, so a
//! deletion claim found in the database belongs to a deleter that died
//! (docs/gc.md) and the holder may finish it.

use std::time::Instant;

use larder_shared::db::leases;

use crate::services::Services;

/// Name of the GC lease (persisted; never change it).
pub const LEASE: &str = "gc";
/// Lease lifetime; renewed after every batch.
pub const LEASE_TTL: i64 = 600;

/// Proof of holding the GC lease; required by every chunk-object deletion.
pub struct GcLease {
    holder: String,
    /// The holder's clock at acquisition (injectable for tests)…
    now: i64,
    /// …advanced by the wall time since, so renewals extend the lease.
    started: Instant,
}

impl GcLease {
    /// Takes the lease at `now` for `holder` if it is free, expired or ours.
    pub async fn acquire(svc: &Services, now: i64, holder: &str) -> anyhow::Result<Option<Self>> {
        Self::acquire_if_due(svc, now, holder, None).await
    }

    /// [`Self::acquire`] for a scheduled run: only if no run finished at or
    /// after `finished_before` (checked in the same statement).
    pub async fn acquire_if_due(
        svc: &Services,
        now: i64,
        holder: &str,
        finished_before: Option<i64>,
    ) -> anyhow::Result<Option<Self>> {
        let mut conn = svc.db.conn().await?;
        if !leases::try_acquire_if_due(conn.raw(), LEASE, holder, now, LEASE_TTL, finished_before)
            .await?
        {
            return Ok(None);
        }
        Ok(Some(Self {
            holder: holder.to_owned(),
            now,
            started: Instant::now(),
        }))
    }

    /// The holder's current time: `now` at acquisition plus the time since.
    pub fn now(&self) -> i64 {
        self.now + self.started.elapsed().as_secs() as i64
    }

    /// Extends the lease; fails if it was lost (expired and taken over), so
    /// a holder that stalled past its lease stops before deleting more.
    pub async fn renew(&self, svc: &Services) -> anyhow::Result<()> {
        let mut conn = svc.db.conn().await?;
        if !leases::renew(conn.raw(), LEASE, &self.holder, self.now(), LEASE_TTL).await? {
            anyhow::bail!("lost the GC lease; another GC took over");
        }
        Ok(())
    }

    /// Gives the lease up; `completed` records a finished GC run (what the
    /// scheduler's interval counts from).
    pub async fn release(self, svc: &Services, completed: bool) -> anyhow::Result<()> {
        let mut conn = svc.db.conn().await?;
        if completed {
            leases::finish(conn.raw(), LEASE, &self.holder, self.now).await?;
        } else {
            leases::release(conn.raw(), LEASE, &self.holder).await?;
        }
        Ok(())
    }
}
