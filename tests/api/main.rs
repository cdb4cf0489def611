//! fedcore's black-box tests: each starts the real binary on a free loopback port over a temp
//! database and acts as a client would. One integration binary, one module per area.

mod support;

mod auth;
mod bad_input;
mod bench;
mod cli;
mod connections;
mod edges;
mod export;
mod gates;
mod idempotency;
mod lifecycle;
mod migrations;
mod proof;
mod races;
mod receipts;
mod scenarios;
mod shutdown;
mod signing;
mod triggers;
mod verify;
