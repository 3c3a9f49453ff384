//! A counting global allocator for tests and benchmarks on the CPU: current and peak heap bytes.
//!
//! Install it in a binary or an integration test with
//! `#[global_allocator] static A: headroom_engine::telemetry::CountingAlloc = CountingAlloc;`.
//! Until something has been allocated through it, [`heap_current`] and [`heap_peak`] return
//! `None`, so code that reads them never reports numbers from an allocator that is not there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// A global allocator over [`System`] that counts live heap bytes and their peak with atomics.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAlloc;

#[inline]
fn grew(bytes: usize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let now = CURRENT.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[inline]
fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        let old = layout.size();
        if p == ptr {
            // Grown or shrunk in place: only the difference changed hands.
            if new_size > old { grew(new_size - old) } else { shrank(old - new_size) }
        } else if !p.is_null() {
            // Moved: both blocks were live at once, so count the new one before the old one goes.
            grew(new_size);
            shrank(old);
        }
        p
    }
}

/// Live heap bytes, or `None` when [`CountingAlloc`] is not the global allocator.
pub fn heap_current() -> Option<u64> {
    INSTALLED.load(Ordering::Relaxed).then(|| CURRENT.load(Ordering::Relaxed))
}

/// The most live heap bytes since the last [`reset_heap_peak`], or `None` when
/// [`CountingAlloc`] is not the global allocator.
pub fn heap_peak() -> Option<u64> {
    INSTALLED.load(Ordering::Relaxed).then(|| PEAK.load(Ordering::Relaxed))
}

/// Starts a new peak from the current live bytes (a no-op in effect when not installed).
pub fn reset_heap_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}
