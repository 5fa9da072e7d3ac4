//! HTTP routes outside the Leptos app. Each module exposes a `router()`.

pub mod api_v1;
pub mod bench;
pub mod health;
pub mod page_guard;
pub mod usage;
