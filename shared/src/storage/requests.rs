//! Counts of requests to a remote object store, per operation and outcome,
//! for `/metrics` (docs/operations.md "Monitoring": what storage costs is requests per GB pushed).
//!
//! Process-wide, like the metrics of one replica: every remote backend of
//! the process adds to the same counters. A request retried by the client
//! counts once; a listing counts one request per page of
//! [`LIST_PAGE`] keys, as S3 bills it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Keys per page of an S3 listing (`ListObjectsV2`'s maximum and default).
pub const LIST_PAGE: u64 = 1000;

/// One kind of storage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A whole-object `PUT`.
    Put,
    /// `CreateMultipartUpload`.
    CreateMultipart,
    /// One `UploadPart`.
    UploadPart,
    /// `CompleteMultipartUpload`.
    CompleteMultipart,
    /// `AbortMultipartUpload`.
    AbortMultipart,
    /// A (ranged) `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `DELETE`.
    Delete,
    /// One page of `ListObjectsV2`.
    List,
}

impl Op {
    const ALL: [Op; 9] = [
        Op::Put,
        Op::CreateMultipart,
        Op::UploadPart,
        Op::CompleteMultipart,
        Op::AbortMultipart,
        Op::Get,
        Op::Head,
        Op::Delete,
        Op::List,
    ];

    /// The `op` label value.
    pub fn label(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::CreateMultipart => "create_multipart",
            Op::UploadPart => "upload_part",
            Op::CompleteMultipart => "complete_multipart",
            Op::AbortMultipart => "abort_multipart",
            Op::Get => "get",
            Op::Head => "head",
            Op::Delete => "delete",
            Op::List => "list",
        }
    }
}

const N: usize = Op::ALL.len();

/// `[ok, failed]` counters per operation.
static COUNTS: [[AtomicU64; 2]; N] = [const { [const { AtomicU64::new(0) }; 2] }; N];

/// Records one request; `ok` is false when it failed after its retries.
pub fn record(op: Op, ok: bool) {
    COUNTS[op as usize][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
}

/// One counter of [`snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCount {
    /// The operation.
    pub op: Op,
    /// False for requests that failed after their retries.
    pub ok: bool,
    /// How many.
    pub count: u64,
}

/// Every non-zero counter, in a stable order.
pub fn snapshot() -> Vec<RequestCount> {
    let mut out = Vec::new();
    for op in Op::ALL {
        for (i, ok) in [true, false].into_iter().enumerate() {
            let count = COUNTS[op as usize][i].load(Ordering::Relaxed);
            if count > 0 {
                out.push(RequestCount { op, ok, count });
            }
        }
    }
    out
}

/// The count of `op` requests with outcome `ok` (tests, measurements).
pub fn count(op: Op, ok: bool) -> u64 {
    COUNTS[op as usize][usize::from(!ok)].load(Ordering::Relaxed)
}
