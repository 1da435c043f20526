//! A scratch folder for arbiter's own tests (the `scratch` feature, which the workspace's
//! test builds turn on): not part of the engine's API.

use std::path::{Path, PathBuf};

/// A folder made empty when created and removed when dropped — except when dropped while a
/// test panics: then it stays, and its path is printed, so a failing test's files can be read.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `$TMPDIR/<name>`, emptied and created. Panics when it cannot be created (a test helper).
    #[expect(
        clippy::panic,
        reason = "a test helper: a folder it cannot make fails the test"
    )]
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for the failing test: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ScratchDir;

    #[test]
    fn a_scratch_folder_is_removed_when_dropped_and_kept_when_a_test_fails() {
        let name = format!("arbiter-scratch-{}", std::process::id());
        let dir = ScratchDir::new(&name);
        std::fs::write(dir.join("f"), "x").unwrap();
        let path = dir.to_path_buf();
        drop(dir);
        assert!(!path.exists());
        let kept = std::thread::spawn(move || {
            let dir = ScratchDir::new(&name);
            std::fs::write(dir.join("f"), "x").unwrap();
            let path = dir.to_path_buf();
            let _d = dir;
            std::panic::panic_any(path);
        })
        .join()
        .unwrap_err();
        let path = kept.downcast::<std::path::PathBuf>().unwrap();
        assert!(path.join("f").exists());
        std::fs::remove_dir_all(*path).unwrap();
    }
}
