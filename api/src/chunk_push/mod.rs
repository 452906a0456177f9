//! Chunk-level push (docs/protocol.md "Chunk-level push"): the server side
//! of `larder push` sending only the chunks a cache lacks.
//!
//! `presence` is the no-oracle rule (which chunks count as already sent),
//! `batch` receives and verifies chunk frames, `assemble` reads a committed
//! NAR back from its chunks into the whole-NAR upload path
//! ([`crate::routes::upload_path::accept`]), which verifies and stages it
//! exactly as if the NAR had been uploaded whole: the worker's ingest then
//! stores it, and every guarantee of that path (acknowledged only when
//! recorded, served at once, nothing partial on failure) holds unchanged.
//! `lists` remembers the questions' chunk lists for commits that name them;
//! `prepared` splits that commit in two: the verification and staging
//! first, the recording once the path's references are in; `streamed`
//! lets that first half run while the client is still cutting the NAR.
//! `inline` takes a NAR of one chunk in its commit, in one request.

pub mod assemble;
pub mod batch;
pub mod inline;
pub mod lists;
pub mod prepared;
pub mod presence;
pub mod streamed;

use crate::auth::Credentials;

/// Whose pushed chunks a caller may count as sent: the token's subject
/// (what a retried CI job keeps), else its `jti`. Tokens carrying neither
/// share the empty name, which only such tokens can use.
pub fn pusher(credentials: &Credentials) -> String {
    let actor = credentials.actor();
    actor
        .subject
        .map(|s| format!("sub:{s}"))
        .or(actor.jti.map(|j| format!("jti:{j}")))
        .unwrap_or_default()
}
