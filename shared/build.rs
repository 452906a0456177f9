//! `sqlx::migrate!` embeds `../migrations` at compile time; without this,
//! a migration added to the directory is missed by incremental builds
//! (sqlx's documented remedy).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
