//! Closure-aware retention (docs/gc.md "Closures"): GC never breaks a live closure.
//!
//! Paths are pushed through the router as `larder push` pushes them (deps
//! before roots), then their clocks are set ([`set_path_time`]) and GC runs
//! at an injected `now`. The race ([`uploads_racing_gc_keep_closures`])
//! runs at real time instead: pushes (get-missing-paths as `larder push`
//! asks, or narinfo GETs as `nix copy` does, then upload-path of what is
//! missing) interleave with repeated GCs under a 60 s retention,
//! and after each round every path the cache holds has every reference the
//! cache ever held (`LARDER_CLOSURE_RACE_ROUNDS` soaks longer).

use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use sqlx::AssertSqlSafe;

use larder_shared::db::{Db, unix_now};
use larder_shared::token::Permission;
use larder_worker::gc_dry_run;
use larder_worker::jobs::gc as gc_job;

use super::clock::{HOLDER, gc_at, set_path_time};
use super::http::{assert_served, missing_paths, narinfo_status, pin, set_retention, unpin};
use crate::common::TestApp;
use crate::common::nar::{Rng, TestNar};
use crate::common::read::assert_kind;

const PULL_PUSH: &[Permission] = &[Permission::Pull, Permission::Push];
/// Retention of the caches here: the issue's 60 s.
const RETENTION: i64 = 60;

fn small(name: &str, seed: u64, refs: &[&TestNar]) -> TestNar {
    let mut n = TestNar::files(name, seed, &[64 + seed as usize % 200]);
    n.references = refs.iter().map(|r| r.base_name.clone()).collect();
    n
}

async fn short_cache(app: &TestApp, name: &str) -> String {
    app.create_cache(name, false).await;
    set_retention(app, name, json!({ "Period": RETENTION })).await;
    app.token(&[(name, PULL_PUSH)])
}

async fn push(app: &TestApp, token: &str, cache: &str, nars: &[&TestNar]) {
    for n in nars {
        assert_kind(&app.upload(token, cache, n).await, "Uploaded");
    }
}

/// `(store_path_hash, refs)` of every object of `cache`.
async fn objects_of(db: &Db, cache: &str) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT store_path_hash, refs FROM objects
         WHERE cache_id = (SELECT id FROM caches WHERE name = '{cache}')"
    );
    let q = AssertSqlSafe(sql);
    match db {
        Db::Postgres(p) => sqlx::query_as::<_, (String, String)>(q).fetch_all(p).await,
        Db::Sqlite(p) => sqlx::query_as::<_, (String, String)>(q).fetch_all(p).await,
    }
    .expect("objects query")
}

/// Every reference (among `known`: paths ever pushed to `cache`) of every
/// path `cache` holds is held too; returns how many paths it holds.
async fn assert_closures_complete(
    app: &TestApp,
    cache: &str,
    known: &BTreeSet<String>,
    ctx: &str,
) -> usize {
    let objects = objects_of(&app.state.db, cache).await;
    let held: BTreeSet<&str> = objects.iter().map(|(h, _)| h.as_str()).collect();
    for (hash, refs) in &objects {
        for r in refs.split_whitespace() {
            let h = &r[..32];
            assert!(
                !known.contains(h) || held.contains(h),
                "{ctx}: {cache} serves {hash} but lost its reference {r}"
            );
        }
    }
    objects.len()
}

/// The issue's scenario: dependencies pushed at t0, a root referring to them
/// at t0 + 50 s, GC at t0 + 70 s. The root keeps all of them; an
/// unreferenced path of t0 goes, and so does the same dependency in
/// another cache, where nothing refers to it.
pub async fn live_root_keeps_its_closure(app: &TestApp) {
    let token = short_cache(app, "cl").await;
    let other = short_cache(app, "cl-other").await;
    let absent = format!("{}-glibc-2.40", Rng::new(1999).store_hash());
    let d1 = small("d1", 1901, &[]);
    let d2 = small("d2", 1902, &[&d1]);
    let d3 = small("d3", 1903, &[&d1, &d2]);
    let mut d4 = small("d4", 1904, &[&d3]);
    d4.references.push(absent.clone());
    d4.references.push(d4.base_name.clone());
    let root = small("root", 1905, &[&d1, &d2, &d3, &d4]);
    let junk = small("junk", 1906, &[&d1]);
    push(app, &token, "cl", &[&d1, &d2, &d3, &d4, &root, &junk]).await;
    assert_kind(&app.upload(&other, "cl-other", &d1).await, "Deduplicated");
    assert_eq!(
        app.count("object_refs").await,
        1 + 2 + 2 + 4 + 1,
        "one index row per reference, without self-references (d4's absent one counts)"
    );

    let t0 = unix_now() - 1000;
    for d in [&d1, &d2, &d3, &d4, &junk] {
        set_path_time(app, "cl", d, t0).await;
    }
    set_path_time(app, "cl-other", &d1, t0).await;
    set_path_time(app, "cl", &root, t0 + 50).await;

    let report = gc_at(app, t0 + 70).await;
    assert_eq!(report.objects_expired, 2, "junk, and d1 in cl-other");
    let closure = [&root, &d1, &d2, &d3, &d4];
    assert_served(app, &token, "cl", &closure, &[&junk], "root live").await;
    assert_served(
        app,
        &other,
        "cl-other",
        &[],
        &[&d1],
        "nothing refers to it there",
    )
    .await;

    // Once the root is idle too (and the reads just made, which count as
    // uses), everything goes in one run, referrers first.
    let report = gc_at(app, unix_now() + RETENTION + 5).await;
    assert_eq!(report.objects_expired, 5);
    assert_served(app, &token, "cl", &[], &closure, "root idle").await;
    assert_eq!(
        app.count("object_refs").await,
        0,
        "index rows go with their objects"
    );
}

/// A closure shared by two roots survives until both are idle.
pub async fn shared_closure_survives_until_both_roots_expire(app: &TestApp) {
    let token = short_cache(app, "cs").await;
    let s2 = small("s2", 1911, &[]);
    let s1 = small("s1", 1912, &[&s2]);
    let a = small("a", 1913, &[&s1]);
    let b = small("b", 1914, &[&s1, &s2]);
    push(app, &token, "cs", &[&s2, &s1, &a, &b]).await;
    let t0 = unix_now() - 1000;
    set_path_time(app, "cs", &s2, t0).await;
    set_path_time(app, "cs", &s1, t0).await;
    set_path_time(app, "cs", &a, t0 + 10).await;
    set_path_time(app, "cs", &b, t0 + 40).await;

    assert_eq!(gc_at(app, t0 + 80).await.objects_expired, 1, "a");
    assert_served(app, &token, "cs", &[&b, &s1, &s2], &[&a], "b live").await;
    // (The reads just made count as uses.)
    assert_eq!(
        gc_at(app, unix_now() + RETENTION + 5).await.objects_expired,
        3
    );
    assert_served(app, &token, "cs", &[], &[&b, &s1, &s2], "both idle").await;
}

/// A pin keeps its closure however old, and an unpinned idle referrer of
/// part of it goes; after unpinning, all of it goes.
pub async fn pin_protects_its_closure(app: &TestApp) {
    let token = short_cache(app, "cp").await;
    let q = small("q", 1921, &[]);
    let p = small("p", 1922, &[&q]);
    let top = small("top", 1923, &[&p]);
    let stray = small("stray", 1924, &[&q]);
    push(app, &token, "cp", &[&q, &p, &top, &stray]).await;
    let t0 = unix_now() - 10_000;
    for n in [&q, &p, &top, &stray] {
        set_path_time(app, "cp", n, t0).await;
    }
    pin(app, &token, "cp", "rel", &top.store_path())
        .await
        .assert_status(axum::http::StatusCode::NO_CONTENT);
    assert_eq!(gc_at(app, t0 + 5000).await.objects_expired, 1, "stray");
    assert_served(app, &token, "cp", &[&top, &p, &q], &[&stray], "pinned").await;
    unpin(app, &token, "cp", "rel")
        .await
        .assert_status(axum::http::StatusCode::NO_CONTENT);
    assert_eq!(
        gc_at(app, unix_now() + RETENTION + 5).await.objects_expired,
        3
    );
    assert_served(app, &token, "cp", &[], &[&top, &p, &q], "unpinned").await;
}

/// Using a path refreshes it: get-missing-paths finding it present, and an
/// upload referring to it (what `larder push` of a new root does).
pub async fn uses_refresh_what_pushes_rely_on(app: &TestApp) {
    let token = short_cache(app, "cu").await;
    let d = small("d", 1931, &[]);
    let e = small("e", 1932, &[]);
    let gone = small("gone", 1933, &[]);
    push(app, &token, "cu", &[&d, &e, &gone]).await;
    let old = unix_now() - 1000;
    for n in [&d, &e, &gone] {
        set_path_time(app, "cu", n, old).await;
    }
    let missing = missing_paths(app, &token, "cu", &[&d]).await;
    assert!(missing.is_empty(), "{missing:?}");
    let root = small("root", 1934, &[&e]);
    push(app, &token, "cu", &[&root]).await;
    set_path_time(app, "cu", &root, old).await;
    let fresh = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM objects WHERE last_accessed_at > {} AND store_path_hash IN ('{}', '{}')",
            old + 500,
            d.store_hash(),
            e.store_hash()
        ))
        .await;
    assert_eq!(
        fresh, 2,
        "d found present and e referred to were marked used"
    );
    // Everything else is idle: the root goes, its reference stays (used).
    assert_eq!(
        gc_at(app, unix_now() + 5).await.objects_expired,
        2,
        "gone and root"
    );
    assert_served(app, &token, "cu", &[&d, &e], &[&gone, &root], "used").await;
}

/// Replacing a path's NAR (`X-Larder-Replace`, with `d`) replaces its
/// references in the index too: the old reference is no longer kept alive,
/// the new one is.
pub async fn replaced_references_follow_the_new_nar(app: &TestApp) {
    app.create_cache("cx", false).await;
    set_retention(app, "cx", json!({ "Period": RETENTION })).await;
    let token = app.token(&[(
        "cx",
        &[Permission::Pull, Permission::Push, Permission::Delete],
    )]);
    let old_dep = small("old-dep", 1951, &[]);
    let new_dep = small("new-dep", 1952, &[]);
    let v1 = small("app", 1953, &[&old_dep]);
    let mut v2 = TestNar::files("app", 1954, &[333]);
    v2.base_name = v1.base_name.clone();
    v2.references = vec![new_dep.base_name.clone(), v1.base_name.clone()];
    push(app, &token, "cx", &[&old_dep, &new_dep, &v1]).await;
    let req = crate::common::request(
        axum::http::Method::PUT,
        "/_api/v1/upload-path",
        Some(&token),
    )
    .header("x-attic-nar-info", v2.info("cx").to_string())
    .header("x-larder-replace", "1")
    .header(axum::http::header::CONTENT_TYPE, "application/x-nix-nar")
    .body(axum::body::Body::from(v2.bytes.clone()))
    .expect("request");
    app.send(req)
        .await
        .assert_status(axum::http::StatusCode::OK);
    let indexed = objects_of(&app.state.db, "cx").await;
    let refs = indexed
        .iter()
        .find(|(h, _)| h == v1.store_hash())
        .map(|(_, r)| r.clone())
        .expect("app held");
    assert!(refs.contains(&new_dep.base_name), "{refs}");
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM object_refs WHERE ref_hash = '{}'",
            new_dep.store_hash()
        ))
        .await,
        1
    );
    assert_eq!(
        app.count("object_refs").await,
        1,
        "old reference and self left out"
    );
    let t0 = unix_now() - 1000;
    set_path_time(app, "cx", &old_dep, t0).await;
    set_path_time(app, "cx", &new_dep, t0).await;
    assert_eq!(gc_at(app, unix_now()).await.objects_expired, 1, "old-dep");
    assert_served(app, &token, "cx", &[&v2, &new_dep], &[&old_dep], "replaced").await;
}

/// Paths whose (uploaded) metadata refer to each other in a cycle go
/// together once idle and unreferenced, and stay while a live path refers
/// to one of them.
pub async fn reference_cycles_go_together(app: &TestApp) {
    let token = short_cache(app, "cc").await;
    let mut a = small("cyc-a", 1961, &[]);
    let b = small("cyc-b", 1962, &[&a]);
    a.references = vec![b.base_name.clone()];
    let c = small("cyc-c", 1963, &[&b]);
    let top = small("top", 1964, &[&c]);
    push(app, &token, "cc", &[&a, &b, &c, &top]).await;
    let t0 = unix_now() - 1000;
    for n in [&a, &b, &c] {
        set_path_time(app, "cc", n, t0).await;
    }
    set_path_time(app, "cc", &top, t0 + 30).await;
    assert_eq!(gc_at(app, t0 + 70).await.objects_expired, 0, "top is live");
    let report = gc_at(app, unix_now() + RETENTION + 5).await;
    assert_eq!(report.objects_expired, 4, "top, c, then the cycle a ↔ b");
    assert_eq!(app.count("objects").await, 0);
}

/// `gc_dry_run::dry_run` (`larder-admin gc --dry-run`) reports what the next GC
/// expires, with reasons, and deletes nothing.
pub async fn dry_run_reports_what_would_go(app: &TestApp) {
    let token = short_cache(app, "cd").await;
    app.create_cache("cd-keep", false).await;
    set_retention(app, "cd-keep", json!({ "Period": 0 })).await;
    let dep = small("dep", 1941, &[]);
    let root = small("root", 1942, &[&dep]);
    let junk = small("junk", 1943, &[]);
    push(app, &token, "cd", &[&dep, &root, &junk]).await;
    let t0 = unix_now() - 1000;
    set_path_time(app, "cd", &dep, t0).await;
    set_path_time(app, "cd", &junk, t0).await;
    set_path_time(app, "cd", &root, t0 + 30).await;

    let now = t0 + 70;
    let report = gc_dry_run::dry_run(&app.services, now)
        .await
        .expect("dry run");
    let cd = report
        .iter()
        .find(|c| c.cache == "cd")
        .expect("cd reported");
    assert_eq!(cd.retention_period, RETENTION);
    assert_eq!(cd.idle_before, Some(now - RETENTION));
    assert_eq!((cd.paths, cd.idle_kept_by_referrers), (3, 1));
    assert_eq!(
        cd.expiring,
        vec![gc_dry_run::DoomedPath {
            store_path: junk.store_path(),
            last_accessed_at: t0,
        }]
    );
    let keep = report
        .iter()
        .find(|c| c.cache == "cd-keep")
        .expect("cd-keep");
    assert_eq!(keep.idle_before, None);
    let text = gc_dry_run::render_dry_run(&report);
    assert!(
        text.contains(&format!(
            "  expire {}: idle since {}, past retention 1m, no live path refers to it",
            junk.store_path(),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t0 as u64)
            )
        )),
        "{text}"
    );
    assert!(text.contains("cache cd-keep: retention forever"), "{text}");
    assert!(
        text.contains(
            "summary: 1 paths would expire; 1 idle paths kept because live paths need them"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&report).expect("JSON");
    let cd_json = json
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cache"] == "cd"))
        .expect("cd in the JSON");
    assert_eq!(
        cd_json["expiring"][0]["store_path"],
        json!(junk.store_path())
    );
    assert_eq!(cd_json["idle_kept_by_referrers"], json!(1));
    assert_eq!(app.count("objects").await, 3, "a dry run deletes nothing");

    let run = gc_at(app, now).await;
    assert_eq!(
        run.objects_expired, 1,
        "the real run does what the dry run said"
    );
    assert_served(app, &token, "cd", &[&root, &dep], &[&junk], "after GC").await;
}

/// Pushes racing GC never leave a served path without part of its closure.
pub async fn uploads_racing_gc_keep_closures(app: &TestApp) {
    const CACHE: &str = "cr";
    let token = short_cache(app, CACHE).await;
    let rounds: u64 = std::env::var("LARDER_CLOSURE_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut rng = Rng::new(0xc105);
    let mut seed = 20_000;
    let mut all: Vec<TestNar> = Vec::new();
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut expired = 0u64;
    for round in 0..rounds {
        // About half of what the cache holds turns idle.
        let now = unix_now();
        let held: BTreeSet<String> = objects_of(&app.state.db, CACHE)
            .await
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        for n in all.iter().filter(|n| held.contains(n.store_hash())) {
            if rng.next_u64().is_multiple_of(2) {
                set_path_time(app, CACHE, n, now - 2 * RETENTION).await;
            }
        }
        // Three new roots, each on a random handful of earlier paths plus a
        // fresh dependency (and a reference the cache never holds).
        let mut closures: Vec<Vec<TestNar>> = Vec::new();
        for _ in 0..3 {
            seed += 1;
            let dep = small("dep", seed, &[]);
            let mut refs: Vec<&TestNar> = vec![&dep];
            let picks = if all.is_empty() {
                0
            } else {
                2 + rng.next_u64() % 5
            };
            for _ in 0..picks {
                refs.push(&all[(rng.next_u64() % all.len() as u64) as usize]);
            }
            // A path's closure: its references' closures (refs of refs).
            let mut closure: HashMap<String, TestNar> = HashMap::new();
            for r in &refs {
                closure_of(r, &all, &mut closure);
            }
            seed += 1;
            let mut root = small("root", seed, &refs);
            root.references
                .push(format!("{}-upstream", Rng::new(seed).store_hash()));
            let mut order: Vec<TestNar> = closure.into_values().collect();
            order.sort_by_key(|n| depth(n, &all, &[&dep]));
            order.push(root);
            closures.push(order);
        }
        // Rounds alternate between the two ways of asking.
        let by_narinfo = round % 2 == 1;
        let pushes = async {
            for closure in &closures {
                push_closure(app, &token, CACHE, closure, by_narinfo).await;
            }
        };
        let gcs = async {
            let mut report = Vec::new();
            for _ in 0..4 {
                let r = gc_job::run(&app.services, unix_now(), HOLDER)
                    .await
                    .expect("GC")
                    .expect("lease");
                report.push(r.objects_expired);
                tokio::task::yield_now().await;
            }
            report
        };
        let ((), runs) = tokio::join!(pushes, gcs);
        expired += runs.iter().sum::<u64>();
        for c in closures {
            for n in c {
                if known.insert(n.store_hash().to_owned()) {
                    all.push(n);
                }
            }
        }
        let ctx = format!("round {round}");
        assert_closures_complete(app, CACHE, &known, &ctx).await;
        // One more GC after the pushes: still complete.
        gc_at(app, unix_now()).await;
        let held = assert_closures_complete(app, CACHE, &known, &ctx).await;
        assert!(held > 0, "{ctx}: the new roots are live");
    }
    assert!(expired > 0, "the racing GCs expired something");
}

/// Adds `n` and everything it references (among `all`) to `out`.
fn closure_of(n: &TestNar, all: &[TestNar], out: &mut HashMap<String, TestNar>) {
    if out.contains_key(n.store_hash()) {
        return;
    }
    out.insert(n.store_hash().to_owned(), n.clone());
    for r in &n.references {
        if let Some(m) = all.iter().find(|m| &m.base_name == r) {
            closure_of(m, all, out);
        }
    }
}

/// Longest reference chain below `n`, so pushes go dependencies first.
fn depth(n: &TestNar, all: &[TestNar], extra: &[&TestNar]) -> usize {
    n.references
        .iter()
        .filter(|r| **r != n.base_name)
        .filter_map(|r| {
            all.iter()
                .chain(extra.iter().copied())
                .find(|m| &m.base_name == r)
        })
        .map(|m| 1 + depth(m, all, extra))
        .max()
        .unwrap_or(0)
}

/// What `larder push` does: ask which paths of the closure the cache lacks,
/// then upload those, dependencies first. With `by_narinfo`, what `nix
/// copy` does instead: one narinfo GET per path.
async fn push_closure(
    app: &TestApp,
    token: &str,
    cache: &str,
    closure: &[TestNar],
    by_narinfo: bool,
) {
    let refs: Vec<&TestNar> = closure.iter().collect();
    let missing: BTreeSet<String> = if by_narinfo {
        let mut m = BTreeSet::new();
        for n in &refs {
            if narinfo_status(app, token, cache, n).await == axum::http::StatusCode::NOT_FOUND {
                m.insert(n.store_hash().to_owned());
            }
        }
        m
    } else {
        missing_paths(app, token, cache, &refs).await
    };
    for n in closure.iter().filter(|n| missing.contains(n.store_hash())) {
        let resp = app.upload(token, cache, n).await;
        resp.assert_status(axum::http::StatusCode::OK);
    }
}
