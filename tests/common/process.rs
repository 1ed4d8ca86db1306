//! What the kernel says about a running process (`/proc/<pid>/status`),
//! e.g. the relay's peak memory.

/// A `kB` field of /proc/<pid>/status (`"VmHWM:"`, `"VmRSS:"`, ...), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("kB value");
    kb * 1024
}
