//! HTTP routes outside the Leptos app (each exposes a `router()`), and the guards in front of
//! the Leptos pages and server functions (`page_guard`, `same_origin`, `page_deadline`).

pub mod api_v1;
pub mod bench;
pub mod health;
pub mod metrics;
pub mod page_deadline;
pub mod page_guard;
pub mod same_origin;
pub mod unsubscribe;
pub mod usage;
