//! The [`Storage`] contract as tests, run against every backend: each
//! backend's test module calls these on a fresh, empty store (local: a temp
//! directory; S3: a fresh key prefix on the test server).

use std::io::{self, ErrorKind};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{ByteStream, ObjectKey, Storage, StorageError};

pub(crate) fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

pub(crate) fn pieces(parts: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(futures::stream::iter(
        parts.into_iter().map(|p| Ok(Bytes::from(p))),
    ))
}

pub(crate) async fn read_all(s: &dyn Storage, k: &ObjectKey, range: Option<Range<u64>>) -> Vec<u8> {
    let stream = s.get(k, range).await.unwrap();
    let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
    parts.concat()
}

pub(crate) async fn listed(s: &dyn Storage, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = s
        .list(prefix)
        .map_ok(|m| m.key.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// A stream of `parts`, then an error.
fn failing_after(parts: Vec<Bytes>) -> ByteStream {
    let err = io::Error::new(ErrorKind::ConnectionReset, "client went away");
    Box::pin(futures::stream::iter(
        parts.into_iter().map(Ok).chain([Err(err)]),
    ))
}

pub(crate) async fn put_get_round_trip_of_a_multi_piece_stream(s: &dyn Storage) {
    let k = key("chunks/ab/cd/abcd.zst");
    let parts: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 300_000]).collect();
    let expected = parts.concat();
    assert_eq!(s.put(&k, pieces(parts)).await.unwrap(), 1_500_000);
    assert_eq!(read_all(s, &k, None).await, expected);
    let meta = s.head(&k).await.unwrap().unwrap();
    assert_eq!((meta.key, meta.size), (k, 1_500_000));
    let empty = key("empty");
    assert_eq!(s.put(&empty, pieces(vec![])).await.unwrap(), 0);
    assert!(read_all(s, &empty, None).await.is_empty());
    assert_eq!(s.head(&empty).await.unwrap().unwrap().size, 0);
    s.check().await.unwrap();
}

pub(crate) async fn range_get_reads_exactly_the_range(s: &dyn Storage) {
    let k = key("obj");
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    s.put_bytes(&k, Bytes::from(data.clone())).await.unwrap();
    for r in [
        0..0,
        5..10,
        0..400_000,
        131_000..400_000,
        399_999..400_000,
        400_000..400_000,
    ] {
        let got = read_all(s, &k, Some(r.clone())).await;
        assert_eq!(got, data[r.start as usize..r.end as usize], "{r:?}");
    }
    for r in [
        Range { start: 10, end: 5 },
        0..400_001,
        400_001..400_002,
        399_999..500_000,
        400_000..400_001,
    ] {
        let err = s.get(&k, Some(r.clone())).await.err().unwrap();
        assert!(
            matches!(err, StorageError::InvalidRange { size: 400_000, .. }),
            "{r:?}: {err:?}"
        );
    }
    let err = s.get(&key("missing"), None).await.err().unwrap();
    assert!(matches!(err, StorageError::NotFound(k) if k.as_str() == "missing"));
    let err = s.get(&key("missing"), Some(0..1)).await.err().unwrap();
    assert!(matches!(err, StorageError::NotFound(_)), "{err:?}");
    let err = s
        .get(&key("obj/below-an-object"), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::NotFound(_)));
    assert!(s.head(&key("missing")).await.unwrap().is_none());
}

pub(crate) async fn put_overwrites(s: &dyn Storage) {
    let k = key("a/b");
    s.put_bytes(&k, Bytes::from_static(b"first, longer"))
        .await
        .unwrap();
    s.put_bytes(&k, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(read_all(s, &k, None).await, b"second");
}

pub(crate) async fn delete_is_idempotent(s: &dyn Storage) {
    let k = key("x/y");
    s.delete(&k).await.unwrap();
    s.put_bytes(&k, Bytes::from_static(b"data")).await.unwrap();
    s.delete(&k).await.unwrap();
    assert!(s.head(&k).await.unwrap().is_none());
    assert!(matches!(
        s.get(&k, None).await,
        Err(StorageError::NotFound(_))
    ));
    s.delete(&k).await.unwrap();
}

pub(crate) async fn list_by_prefix(s: &dyn Storage) {
    let all = [
        "chunks/ab/cd/x1",
        "chunks/ab/ce/x2",
        "chunks/abc",
        "chunks/ac/00/x3",
        "staging/y",
    ];
    for k in all {
        s.put_bytes(&key(k), Bytes::from_static(b"z"))
            .await
            .unwrap();
    }
    assert_eq!(listed(s, "").await, all);
    assert_eq!(listed(s, "chunks/a").await, all[..4]);
    assert_eq!(listed(s, "chunks/ab").await, all[..3]);
    assert_eq!(listed(s, "chunks/ab/").await, all[..2]);
    assert_eq!(listed(s, "chunks/ab/c").await, all[..2]);
    assert_eq!(listed(s, "chunks/ab/cd/x1").await, all[..1]);
    assert!(listed(s, "nothing/").await.is_empty());
    assert!(listed(s, "staging/y/").await.is_empty());
    let sizes: Vec<u64> = s.list("st").map_ok(|m| m.size).try_collect().await.unwrap();
    assert_eq!(sizes, [1]);
    let bad: Vec<_> = s.list("../").collect().await;
    assert!(matches!(bad[..], [Err(StorageError::InvalidKey(_))]));
}

/// Lists more keys than one S3 page (1000) holds.
pub(crate) async fn list_paginates(s: &dyn Storage) {
    let n = 1100;
    futures::stream::iter(0..n)
        .map(|i| async move {
            s.put_bytes(&key(&format!("many/{i:05}")), Bytes::new())
                .await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let keys = listed(s, "many/").await;
    assert_eq!(keys.len(), n);
    assert_eq!(keys[n - 1], format!("many/{:05}", n - 1));
}

pub(crate) async fn failed_input_stream_leaves_nothing_behind(s: &dyn Storage) {
    let k = key("chunks/00/00/obj");
    s.put_bytes(&k, Bytes::from_static(b"old")).await.unwrap();
    let err = s
        .put(&k, failing_after(vec![Bytes::from(vec![1u8; 100_000])]))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Input { .. }), "{err:?}");
    assert_eq!(read_all(s, &k, None).await, b"old");
    let fresh = key("chunks/00/01/new");
    assert!(s.put(&fresh, failing_after(vec![])).await.is_err());
    assert!(s.head(&fresh).await.unwrap().is_none());
    assert_eq!(listed(s, "").await, ["chunks/00/00/obj"]);
}

pub(crate) async fn concurrent_puts_of_one_key_leave_one_intact_object(s: Arc<dyn Storage>) {
    let k = key("chunks/ff/ff/same");
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let (s, k) = (s.clone(), k.clone());
            tokio::spawn(async move {
                let parts = (0..8).map(move |_| Ok(Bytes::from(vec![i; 50_000])));
                let slow = futures::stream::iter(parts).then(|p| async {
                    tokio::task::yield_now().await;
                    p
                });
                s.put(&k, Box::pin(slow)).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 400_000);
    }
    let got = read_all(&*s, &k, None).await;
    assert_eq!(got.len(), 400_000);
    assert!(got.iter().all(|&b| b == got[0]), "object mixes writers");
    assert_eq!(listed(&*s, "").await, ["chunks/ff/ff/same"]);
}

/// Objects larger than `part` (the S3 backend's multipart threshold): a
/// round trip with odd piece sizes, ranged reads across part boundaries,
/// and a stream failing after several parts, which leaves nothing.
pub(crate) async fn large_objects(s: &dyn Storage, part: usize) {
    let k = key("big/obj");
    let total = 2 * part + part / 3;
    let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
    let odd: Vec<Vec<u8>> = data.chunks(777_777).map(<[u8]>::to_vec).collect();
    assert_eq!(s.put(&k, pieces(odd)).await.unwrap(), total as u64);
    assert_eq!(s.head(&k).await.unwrap().unwrap().size, total as u64);
    assert!(read_all(s, &k, None).await == data, "multipart round trip");
    let (a, b) = (part as u64 - 10, part as u64 + 10);
    assert_eq!(
        read_all(s, &k, Some(a..b)).await,
        data[a as usize..b as usize]
    );
    let k2 = key("big/failed");
    let parts: Vec<Bytes> = (0..3).map(|_| Bytes::from(vec![7u8; part])).collect();
    let err = s.put(&k2, failing_after(parts)).await.unwrap_err();
    assert!(matches!(err, StorageError::Input { .. }), "{err:?}");
    assert!(s.head(&k2).await.unwrap().is_none());
    assert_eq!(listed(s, "big/").await, ["big/obj"]);
}

/// Dropping a `put` mid-stream leaves no object (S3: the upload is aborted).
pub(crate) async fn cancelled_put_leaves_no_object(s: Arc<dyn Storage>, part: usize) {
    let k = key("big/cancelled");
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
    let stream: ByteStream = Box::pin(tokio_stream_from(rx));
    let put = {
        let (s, k) = (s.clone(), k.clone());
        tokio::spawn(async move { s.put(&k, stream).await })
    };
    for _ in 0..2 {
        tx.send(Ok(Bytes::from(vec![1u8; part]))).await.unwrap();
    }
    put.abort();
    let _ = put.await;
    drop(tx);
    assert!(s.head(&k).await.unwrap().is_none());
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}
