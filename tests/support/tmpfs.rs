//! A small tmpfs mounted for a test (root only), unmounted when dropped: a disk that fills.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable that turns a tmpfs that cannot be mounted from a skip into a failure.
pub const REQUIRE_TMPFS: &str = "NEUROMFA_REQUIRE_TMPFS";

pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`; why not, if it
    /// cannot (not root, no mount in this container).
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Mounts a tmpfs of `size` on `dir` for `test`; when it cannot, the test is skipped,
    /// or fails under `NEUROMFA_REQUIRE_TMPFS=1` (as CI, which runs as root, sets).
    pub fn mount_or_skip(test: &str, dir: &Path, size: &str) -> Option<Tmpfs> {
        Self::mount_or_skip_unless(super::required(REQUIRE_TMPFS), test, dir, size)
    }

    /// [`Tmpfs::mount_or_skip`], with the requirement given.
    pub fn mount_or_skip_unless(
        required: Option<&str>,
        test: &str,
        dir: &Path,
        size: &str,
    ) -> Option<Tmpfs> {
        match Tmpfs::mount(dir, size) {
            Ok(disk) => Some(disk),
            Err(why) => {
                let why = format!("no tmpfs for a disk that fills up ({why}); it needs root");
                super::skip_or_fail(required, test, &why);
                None
            }
        }
    }

    /// Writes `name` until the file system is full; returns the bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        let mut file = std::fs::File::create(self.dir.join(name)).unwrap();
        let block = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        let mut len = block.len();
        // Down to single bytes, so not even a small write fits afterwards.
        while len > 0 {
            match file.write(&block[..len]) {
                Ok(0) | Err(_) => len /= 2,
                Ok(n) => written += n as u64,
            }
        }
        let _ = file.sync_all();
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open there does not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
