//! What the fuzz targets share: a scratch directory for the entry points that read files, not bytes.
//!
//! Each target is a small binary under `src/bin/` that hands AFL++'s input to one of mappa's real entry
//! points. Errors are the expected outcome for most inputs; a panic, an abort (a huge allocation from a length
//! field) or a hang is a bug. `tools/fuzz.sh` builds and runs them.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `result` as an Option; with `MAPPA_FUZZ_SHOW=1` in the environment, says on stderr what was accepted and
/// what was refused and why (to check seeds and reproduce findings by hand: `target < input`).
pub fn ok<T>(what: &str, result: anyhow::Result<T>) -> Option<T> {
    static SHOW: OnceLock<bool> = OnceLock::new();
    if *SHOW.get_or_init(|| std::env::var_os("MAPPA_FUZZ_SHOW").is_some_and(|v| v == "1")) {
        match &result {
            Ok(_) => eprintln!("{what}: ok"),
            Err(e) => eprintln!("{what}: refused: {e:#}"),
        }
    }
    result.ok()
}

/// A directory of this process's own under `$TMPDIR` (tools/fuzz.sh points that at its work directory and
/// removes it afterwards).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mappa-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch directory");
        dir
    })
}

/// Writes `bytes` to `name` in the scratch directory and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("writing the scratch file");
    path
}
