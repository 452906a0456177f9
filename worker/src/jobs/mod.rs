//! Job handlers, one file per job; payloads live in `larder_shared::jobs`.

pub mod gc;
pub mod ingest;
pub mod nix_uploads;
pub mod verify;
