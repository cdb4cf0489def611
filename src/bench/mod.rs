//! Benchmarks a user can rerun: `fedcore bench load` drives a real server over HTTP.

mod client;
pub mod load;
