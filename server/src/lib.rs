//! The keymeter server: configuration, wiring of the axum app, HTTP routes, operator CLI.

pub mod cli;
pub mod config;
pub mod demo_traffic;
pub mod error;
pub mod http_server;
pub mod middleware;
pub mod routes;
pub mod startup;
pub mod telemetry;
