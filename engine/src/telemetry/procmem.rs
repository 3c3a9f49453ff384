//! This process's resident memory: a cheap current reading for fast sampling, and on Linux the
//! kernel's own high-water mark (`VmHWM`) with its reset through `/proc/self/clear_refs`.
//!
//! On Linux the readings come from `/proc/self/status` (a few microseconds each), so the peak
//! watcher can sample at 100 Hz. Elsewhere they come from sysinfo, which is slower.

/// Reads this process's resident set size in bytes, or `None` when it cannot be read.
pub fn current_rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        status_field_kib("VmRSS:").map(|kib| kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        sysinfo_rss_bytes()
    }
}

/// The kernel's record of the most resident memory this process has had since it started or
/// since the last successful [`reset_peak_rss`]; `None` where there is no such record.
pub fn kernel_peak_rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        status_field_kib("VmHWM:").map(|kib| kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Resets the kernel's peak (`VmHWM`) to the current RSS by writing `5` to
/// `/proc/self/clear_refs` (Linux 4.0 and later). Returns true only when the reset is confirmed:
/// right afterwards the peak is no higher than the current RSS plus a little slack, so a kernel
/// that ignores the write is detected and callers fall back to sampling.
pub fn reset_peak_rss() -> bool {
    #[cfg(target_os = "linux")]
    {
        if std::fs::write("/proc/self/clear_refs", "5").is_err() {
            return false;
        }
        match (kernel_peak_rss_bytes(), current_rss_bytes()) {
            // Another thread may allocate between the two reads; 16 MiB of slack covers that.
            (Some(hwm), Some(rss)) => hwm <= rss + (16 << 20),
            _ => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// This process's mapped address space (`VmSize`) in bytes: what an address-space limit
/// (`ulimit -v`) counts; `None` where it cannot be read.
pub fn mapped_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        status_field_kib("VmSize:").map(|kib| kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(target_os = "linux")]
fn status_field_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// RSS through sysinfo, for systems without `/proc`.
#[cfg(not(target_os = "linux"))]
fn sysinfo_rss_bytes() -> Option<u64> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = sysinfo::get_current_pid().ok()?;
    let mut sys = System::new().ok()?;
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory(),
    );
    sys.process(pid).map(|p| p.memory())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The current RSS is readable and grows when a large buffer is touched.
    #[test]
    fn rss_sees_a_touched_buffer() {
        let _turn = crate::telemetry::RSS_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let before = current_rss_bytes().expect("rss readable");
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        let after = current_rss_bytes().expect("rss readable");
        std::hint::black_box(&v);
        assert!(after >= before + (48 << 20), "before {before}, after {after}");
    }

    /// On Linux the kernel peak covers a buffer held earlier, and a reset brings it back down.
    #[cfg(target_os = "linux")]
    #[test]
    fn kernel_peak_resets() {
        let _turn = crate::telemetry::RSS_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let v = vec![1u8; 96 << 20];
        std::hint::black_box(&v);
        let held = current_rss_bytes().unwrap();
        let peak_held = kernel_peak_rss_bytes().unwrap();
        assert!(peak_held >= held, "peak {peak_held} < rss {held}");
        drop(v);
        if reset_peak_rss() {
            let after = kernel_peak_rss_bytes().unwrap();
            assert!(after + (64 << 20) <= peak_held, "peak {after} after reset, {peak_held} before");
        } else {
            eprintln!("this kernel does not reset VmHWM; the peak watcher samples instead");
        }
    }
}
