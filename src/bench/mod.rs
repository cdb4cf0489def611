//! Benchmarks run by `fedcore bench`: databases built fast through the real engine (`seed`) and
//! the timings taken over them (`verify`).

pub mod seed;
pub mod verify;
