//! How much memory this process may use: physical memory, or a cgroup's limit when lower.
//! Read from `/proc` and `/sys/fs/cgroup`; must not allocate large buffers or touch the engine.

/// Total memory this process may use: the smaller of physical memory and a cgroup limit.
pub(crate) fn available_memory() -> u64 {
    let physical = read_meminfo_total().unwrap_or(8 << 30);
    match read_cgroup_limit() {
        Some(limit) if limit < physical => limit,
        _ => physical,
    }
}

fn read_meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn read_cgroup_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    .min()
}
