//! How much more this process may allocate besides the machine's free RAM: an address-space
//! limit (`ulimit -v`, `RLIMIT_AS`), under which an allocation fails, and a control group's memory
//! limit (containers, systemd services), under which the kernel kills the process instead. The
//! planner's CPU budget and the worker's check before each run take the tighter of the two.

/// The tightest limit on this process's further allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Bytes that may still be allocated under it.
    pub remaining_bytes: u64,
    /// Which limit it is, in words ("the address-space limit (ulimit -v)").
    pub what: &'static str,
}

/// What `ulimit -v` is called in messages.
const ADDRESS_SPACE: &str = "the address-space limit (ulimit -v)";
/// What a control group's limit is called in messages.
const CGROUP: &str = "the control group's memory limit";

/// What an allocation really takes over what was planned for it, as a fraction: the plan's
/// error (±10% at SD sizes) and the allocator's free memory not yet returned. A stage is checked
/// for its planned bytes × (1 + `SLACK`), and a budget under a limit is what the limit leaves
/// ÷ (1 + `SLACK`), so the pre-flight and the stage check agree.
pub const SLACK: f64 = 0.25;

/// `bytes` with [`SLACK`] added.
pub fn with_slack(bytes: u64) -> u64 {
    bytes.saturating_add((bytes as f64 * SLACK) as u64)
}

/// Limits at or above this (2⁶⁰ bytes) mean none: the kernel writes "unlimited" or a page-rounded
/// `i64::MAX`.
const UNLIMITED: u64 = 1 << 60;

/// The tighter of the address-space and control-group limits; `None` when neither is set (or
/// they cannot be read: not Linux).
pub fn tightest() -> Option<Limit> {
    let address = address_space_remaining().map(|remaining_bytes| Limit { remaining_bytes, what: ADDRESS_SPACE });
    let cgroup = cgroup_remaining().map(|remaining_bytes| Limit { remaining_bytes, what: CGROUP });
    [address, cgroup].into_iter().flatten().min_by_key(|l| l.remaining_bytes)
}

/// Address space left under `RLIMIT_AS`: the soft limit less the process's mapped size now
/// (`VmSize`, which counts mapped model files and reserved thread stacks too).
pub fn address_space_remaining() -> Option<u64> {
    let limit = parse_address_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)?;
    Some(limit.saturating_sub(super::procmem::mapped_bytes()?))
}

/// Memory left under this process's control group: `memory.max − memory.current` (v2) or
/// `memory.limit_in_bytes − memory.usage_in_bytes` (v1), the usage less the page cache the kernel
/// can drop (`inactive_file` in `memory.stat`, as `docker stats` counts it).
pub fn cgroup_remaining() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok().and_then(|s| parse_limit_value(&s));
    for (root, rel, max, current) in cgroup_files(&own) {
        // inside a container the group's own path may not exist in its namespace: the root of
        // the mounted hierarchy is then the group
        for d in [root.join(rel), root] {
            if let (Some(max), Some(current)) = (read(d.join(max)), read(d.join(current))) {
                let stat = std::fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
                let cache = reclaimable_cache(&stat);
                return Some(max.saturating_sub(current.saturating_sub(cache)));
            }
        }
    }
    None
}

/// Page cache the kernel can drop, from a `memory.stat`: `inactive_file` (v2) or
/// `total_inactive_file` (v1, falling back to `inactive_file`); 0 when absent.
fn reclaimable_cache(stat: &str) -> u64 {
    let field = |name: &str| {
        stat.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
    };
    field("total_inactive_file").or_else(|| field("inactive_file")).unwrap_or(0)
}

/// Whether `bytes` can be allocated now: reserves them (address space only, no page touched) and
/// gives them back. Only an address-space limit makes this fail early; under a control group the
/// allocation would succeed and the kernel kill the process later, which [`tightest`] covers.
/// It asks the system allocator directly, so a counting global allocator does not see the probe
/// as a heap peak.
pub fn can_allocate(bytes: u64) -> bool {
    use std::alloc::{GlobalAlloc, Layout, System};
    let Some(layout) = usize::try_from(bytes.max(1)).ok().and_then(|n| Layout::from_size_align(n, 64).ok()) else {
        return false;
    };
    // SAFETY: the layout has a non-zero size; the block is freed at once with the same layout
    unsafe {
        let p = System.alloc(layout);
        if p.is_null() {
            return false;
        }
        System.dealloc(p, layout);
    }
    true
}

/// The soft "Max address space" of `/proc/self/limits`, in bytes; `None` when unlimited.
fn parse_address_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    let soft = line["Max address space".len()..].split_whitespace().next()?;
    soft.parse::<u64>().ok().filter(|&b| b < UNLIMITED)
}

/// A limit file's value in bytes; `None` for "max" or a value that means no limit.
fn parse_limit_value(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&b| b < UNLIMITED)
}

/// The control groups of `/proc/self/cgroup`: each hierarchy's mount, the group's path in it,
/// and its limit and usage file names; the v2 group (`0::/path`) and the v1 memory controller's
/// (`N:memory:/path`).
fn cgroup_files(own: &str) -> Vec<(std::path::PathBuf, String, &'static str, &'static str)> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut out = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let rel = path.trim_start_matches('/').to_string();
        if controllers.is_empty() {
            out.push((root.to_path_buf(), rel, "memory.max", "memory.current"));
        } else if controllers.split(',').any(|c| c == "memory") {
            out.push((root.join("memory"), rel, "memory.limit_in_bytes", "memory.usage_in_bytes"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit is read, and "unlimited" means none.
    #[test]
    fn address_limit_is_parsed() {
        let set = "Limit                     Soft Limit           Hard Limit           Units     \n\
                   Max cpu time              unlimited            unlimited            seconds   \n\
                   Max address space         2147483648           unlimited            bytes     \n";
        assert_eq!(parse_address_limit(set), Some(2 << 30));
        let unset = set.replace("2147483648", "unlimited");
        assert_eq!(parse_address_limit(&unset), None);
    }

    /// Both cgroup versions are found; "max" and v1's page-rounded i64::MAX mean no limit.
    #[test]
    fn cgroup_files_and_values() {
        let v2 = cgroup_files("0::/user.slice/app.scope\n");
        assert_eq!(v2[0].0.join(&v2[0].1), std::path::Path::new("/sys/fs/cgroup/user.slice/app.scope"));
        assert_eq!(v2[0].2, "memory.max");
        let v1 = cgroup_files("5:devices:/\n4:memory:/docker/abc\n0::/\n");
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[0].0.join(&v1[0].1), std::path::Path::new("/sys/fs/cgroup/memory/docker/abc"));
        assert_eq!(v1[0].2, "memory.limit_in_bytes");
        assert_eq!(parse_limit_value("max\n"), None);
        assert_eq!(parse_limit_value("9223372036854771712\n"), None);
        assert_eq!(parse_limit_value("4294967296\n"), Some(4 << 30));
        // the page cache the kernel can drop is not counted as used
        assert_eq!(reclaimable_cache("cache 10\ninactive_file 4096\nactive_file 8\n"), 4096);
        assert_eq!(reclaimable_cache("inactive_file 1\ntotal_inactive_file 8192\n"), 8192);
        assert_eq!(reclaimable_cache(""), 0);
    }

    /// A reservation far beyond any machine fails; a small one succeeds.
    #[test]
    fn can_allocate_is_honest() {
        assert!(can_allocate(1 << 20));
        assert!(!can_allocate(u64::MAX / 2));
    }
}
