//! A global allocator that counts, per thread, the bytes live and their peak, and refuses
//! any allocation that would take the thread past a limit. Fuzz drivers and the bounded
//! runs install it (`#[global_allocator]`) to check each parser's allocation cap: a
//! refused allocation aborts the process ("memory allocation of N bytes failed"), which
//! libFuzzer reports as a crash with the input that caused it, before the memory is used.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The counting allocator; it allocates through [`System`].
pub struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed on this thread. Signed: memory allocated on one
    /// thread may be freed on another.
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    /// Above this many live bytes allocations are refused.
    static LIMIT: Cell<i64> = const { Cell::new(i64::MAX) };
    /// Whether anything was counted on this thread: proves the allocator is installed.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

/// Counts `bytes` more live, unless that crosses the limit (`false`: refuse).
fn grow(bytes: usize) -> bool {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    // `try_with`: during thread teardown the counters may be gone; then nothing is counted.
    LIVE.try_with(|live| {
        let now = live.get().saturating_add(bytes);
        // A panic's report (its message, a backtrace) must not be refused: it is the finding.
        if now > LIMIT.with(Cell::get) && !std::thread::panicking() {
            return false;
        }
        live.set(now);
        PEAK.with(|peak| peak.set(peak.get().max(now)));
        COUNTED.with(|c| c.set(true));
        true
    })
    .unwrap_or(true)
}

fn shrink(bytes: usize) {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: every call is passed on to `System` unchanged; refusing returns null, which the
// `GlobalAlloc` contract allows for any allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as given.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            shrink(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            shrink(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`, so from `System`.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !grow(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `dealloc`; `new_size` is the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        match (new.is_null(), new_size > layout.size()) {
            (true, true) => shrink(new_size - layout.size()),
            (false, false) => shrink(layout.size() - new_size),
            _ => {}
        }
        new
    }
}

/// Runs `f` on this thread with at most `limit` bytes more live at any time than when it
/// started; returns its value and the most it had live beyond that start. Allocations
/// past the limit are refused, which aborts the process.
pub fn measure<T>(limit: usize, f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    let previous_limit = LIMIT.with(|l| l.replace(start.saturating_add(limit as i64)));
    PEAK.with(|peak| peak.set(start));
    let value = f();
    LIMIT.with(|l| l.set(previous_limit));
    let peak = PEAK.with(Cell::get) - start;
    (value, usize::try_from(peak).unwrap_or(0))
}

/// Whether [`Counting`] is the process's global allocator (it has counted on this thread).
pub fn installed() -> bool {
    drop(std::hint::black_box(vec![0u8; 64]));
    COUNTED.with(Cell::get)
}
