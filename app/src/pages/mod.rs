pub mod admin;
pub mod api_keys;
pub mod form_error;
pub mod layout;
pub mod login;
pub mod notifications;
pub mod quota_requests;
pub mod usage;
