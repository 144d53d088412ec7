//! Writes the seed corpus (`privitty_edge_fuzz::seeds`) under `corpus/<target>/<name>`:
//! `cargo run --example write_corpus` in tests/fuzz. Deterministic: rerunning changes nothing.
//! Files added by hand (crash reproducers) are left alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in privitty_edge_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("wrote the seed corpus under {}", root.display());
    Ok(())
}
