//! Watching a running process from outside through Linux's `/proc`, to aim a kill at a
//! moment of interest without any hook in the product: a thread of a given name exists
//! (a worker's `ranged-reads` thread lives exactly as long as its ranged fetch), a thread is
//! inside `fsync`/`fdatasync` (the coordinator's `sweep-state` thread making a commit
//! durable), a file with a given suffix is open (hf-hub writes a download to `*.incomplete`).

#![allow(dead_code)]

use std::path::Path;

/// `fsync` and `fdatasync`: the syscalls that make an SQLite commit durable.
#[cfg(target_arch = "x86_64")]
const SYNC_SYSCALLS: &[i64] = &[74, 75];
#[cfg(target_arch = "aarch64")]
const SYNC_SYSCALLS: &[i64] = &[82, 83];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYNC_SYSCALLS: &[i64] = &[];

/// The id of `pid`'s thread named `name` (as `/proc/PID/task/TID/comm` shows it).
pub fn thread_id(pid: u32, name: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim_end() == name)
            .then(|| task.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// Whether thread `tid` of `pid` is inside `fsync` or `fdatasync` right now.
pub fn syncing(pid: u32, tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
        .is_some_and(|n| SYNC_SYSCALLS.contains(&n))
}

/// Whether `pid` holds a file open whose path ends with `suffix`.
pub fn has_open_file(pid: u32, suffix: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().ends_with(suffix))
    })
}

/// Whether `/proc` lets us see thread names and syscalls here (Linux).
pub fn available() -> bool {
    Path::new("/proc/self/task").is_dir() && !SYNC_SYSCALLS.is_empty()
}
