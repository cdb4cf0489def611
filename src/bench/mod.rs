//! Benchmarks anyone can rerun (`fedcore bench`, see BENCHMARKS.md): `load` drives a real server
//! over HTTP; `seed` builds large databases fast through the real engine; `verify` times
//! `fedcore verify` over one.

mod client;
pub mod load;
pub mod seed;
pub mod verify;
