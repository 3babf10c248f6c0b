//! Build-time inputs the compiler cannot see for itself: the migrations
//! `sqlx::migrate!` embeds.

fn main() {
    // `sqlx::migrate!` embeds the directory; cargo would not otherwise
    // notice a migration being added.
    println!("cargo:rerun-if-changed=migrations");
}
