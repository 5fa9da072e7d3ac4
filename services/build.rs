// The migrations are embedded in this crate (`db::MIGRATIONS`): a new migration folder must
// rebuild it, which cargo does not know by itself.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
