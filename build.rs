//! Re-run the build when a migration is added or changed, so `embed_migrations!` embeds it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
