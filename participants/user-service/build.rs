// `sqlx::migrate!` embeds the migrations at compile time; without this a migration added to the
// directory would not rebuild the crate, and an incremental build would run without it.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/user");
    println!("cargo:rerun-if-changed=../../migrations/outbox"); // linked from the directory above
}
