//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the
//! directory at compile time and cargo would not otherwise notice.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
