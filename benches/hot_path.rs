//! Placeholder until the hot-path benchmarks land.
fn main() {}
