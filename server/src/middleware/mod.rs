//! Tower middleware of the metered API.

pub mod api_key_auth;
pub mod api_usage_tracker;
mod counting_body;
