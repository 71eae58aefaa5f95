//! What the operating system reports about this process and the machine's memory.

/// A `kB` field of a `/proc` file (`VmHWM:`, `MemAvailable:`) in MiB.
fn kb_field_mib(path: &str, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// Peak resident memory of this process in MiB (Linux `VmHWM` from `/proc/self/status`; 0
/// where that file does not exist).
pub fn peak_rss_mib() -> f64 {
    kb_field_mib("/proc/self/status", "VmHWM:").unwrap_or(0.0)
}

/// Resets this process's peak resident memory to what it holds now (Linux: `5` written to
/// `/proc/self/clear_refs`), so a later [`peak_rss_mib`] is the peak of the work between the
/// two; false where the OS cannot (the peak then stays the process's lifetime peak).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Resident memory of this process now, MiB (Linux `VmRSS`; 0 where unknown).
pub fn rss_mib() -> f64 {
    kb_field_mib("/proc/self/status", "VmRSS:").unwrap_or(0.0)
}

/// Memory the machine can give new work without swapping, MiB (Linux `MemAvailable` from
/// `/proc/meminfo`); `None` where the OS does not say.
pub fn available_memory_mib() -> Option<f64> {
    kb_field_mib("/proc/meminfo", "MemAvailable:")
}

#[cfg(test)]
mod tests {
    /// On Linux the three readings exist and are ordered as they must be.
    #[test]
    #[cfg(target_os = "linux")]
    fn memory_readings_exist_on_linux() {
        let (now, peak) = (super::rss_mib(), super::peak_rss_mib());
        assert!(now > 0.0 && peak >= now, "rss {now}, peak {peak}");
        assert!(super::available_memory_mib().is_some_and(|a| a > 0.0));
    }

    /// After a reset the peak is what came after it, not a larger block freed before it.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_reset_peak_forgets_memory_freed_before_it() {
        let block = vec![1u8; 256 << 20];
        std::hint::black_box(&block);
        let with_block = super::peak_rss_mib();
        drop(block);
        if !super::reset_peak_rss() {
            return; // a kernel without clear_refs: nothing to check
        }
        let after = super::peak_rss_mib();
        assert!(
            after + 200.0 < with_block,
            "peak {with_block} MiB with the block, {after} MiB after the reset"
        );
    }
}
