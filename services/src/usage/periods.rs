//! UTC periods of breakdowns and exports: hours, days, ISO weeks, months. The rules live in the
//! `calendar` crate, which the browser shares.

pub use calendar::{DayRange, Granularity, GranularityError, Month, MonthError, RangeError};
