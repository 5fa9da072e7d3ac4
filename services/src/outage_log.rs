//! How a backing service being down is logged. Background loops (usage recorder and writer,
//! mail sender, housekeeping) use [`OutageLog`]: the first failure at WARN, a reminder at most
//! every few minutes while it lasts, and the return at INFO with how long it lasted and how many
//! tries failed. A loop that retries every few hundred milliseconds (or, like the recorder, once
//! per batch) would otherwise write thousands of identical lines an hour and never say when it
//! was over. Requests use [`LogEvery`]: they come as fast as anyone sends them (made-up API keys
//! too), so a line per failed request would let any client fill the logs.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often an outage that goes on is logged again.
const REMIND_EVERY: Duration = Duration::from_secs(300);

pub struct OutageLog {
    /// What fails, for the log lines ("mail sender", "usage writer").
    what: &'static str,
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    last_logged: Instant,
    failures: u64,
}

impl OutageLog {
    pub fn new(what: &'static str) -> Self {
        Self { what, outage: None }
    }

    /// A try failed; `consequence` says what happens meanwhile ("will retry").
    pub fn failed(&mut self, error: &dyn Display, consequence: &str) {
        let now = Instant::now();
        let what = self.what;
        match &mut self.outage {
            None => {
                tracing::warn!(error = %error, "{what}: {consequence}");
                self.outage = Some(Outage { since: now, last_logged: now, failures: 1 });
            }
            Some(o) => {
                o.failures += 1;
                if now.duration_since(o.last_logged) >= REMIND_EVERY {
                    let secs = now.duration_since(o.since).as_secs();
                    tracing::warn!(error = %error, failures = o.failures, "{what}: still failing after {secs} s; {consequence}");
                    o.last_logged = now;
                }
            }
        }
    }

    /// A try succeeded: ends the outage, if there was one.
    pub fn succeeded(&mut self) {
        if let Some(o) = self.outage.take() {
            let secs = o.since.elapsed().as_secs();
            tracing::info!(failures = o.failures, "{}: working again after {secs} s", self.what);
        }
    }
}

/// At most one line per period from one place on the request path, saying how many were left
/// out since the last one. Nothing tells a request that an outage ended, hence no "working
/// again" line as with [`OutageLog`].
pub struct LogEvery {
    period: Duration,
    /// When the last line was written, and the lines left out since.
    last: Mutex<Option<(Instant, u64)>>,
}

impl Default for LogEvery {
    fn default() -> Self {
        Self::new()
    }
}

impl LogEvery {
    /// At most a line per [`REQUEST_FAILURE_LOG_PERIOD`].
    pub const fn new() -> Self {
        Self::every(REQUEST_FAILURE_LOG_PERIOD)
    }

    pub const fn every(period: Duration) -> Self {
        Self { period, last: Mutex::new(None) }
    }

    /// Whether to write a line now: if so, how many were left out before it.
    pub fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        match &mut *last {
            Some((at, left_out)) if now.duration_since(*at) < self.period => {
                *left_out += 1;
                None
            }
            previous => {
                let left_out = previous.map_or(0, |(_, n)| n);
                *previous = Some((now, 0));
                Some(left_out)
            }
        }
    }
}

/// How often a request-path failure of one kind is logged at most.
pub const REQUEST_FAILURE_LOG_PERIOD: Duration = Duration::from_secs(10);

/// `tracing::warn!` through a [`LogEvery`] (`warn_every!(LOG, error = %e, "…")`): the line gets
/// `left_out` and keeps the caller's module as its target.
#[macro_export]
macro_rules! warn_every {
    ($log:expr, $($arg:tt)+) => {
        if let Some(left_out) = $log.allow() {
            ::tracing::warn!(left_out, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_left_out() {
        let log = LogEvery::every(Duration::from_millis(200));
        assert_eq!(log.allow(), Some(0));
        assert_eq!((0..1_000).filter_map(|_| log.allow()).count(), 0);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.allow(), Some(1_000));
        assert_eq!(log.allow(), None);
    }
}
