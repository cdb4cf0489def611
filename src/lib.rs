//! fedcore: an embedded, single-file workflow governance engine. The binary is `src/main.rs`;
//! this library exposes the layers so tests and benches can reach them. Dependencies point one
//! way: `http → engine → store → model`; see ARCHITECTURE.md.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod engine;
pub mod export;
pub mod http;
pub mod keyfile;
pub mod model;
pub mod proof;
pub mod secret;
pub mod store;
