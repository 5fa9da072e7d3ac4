//! How background loops (usage recorder and writer, mail sender, housekeeping) log a backing
//! service being down: the first failure at WARN, a reminder at most every few minutes while it
//! lasts, and the return at INFO with how long it lasted and how many tries failed. A loop that
//! retries every few hundred milliseconds (or, like the recorder, once per batch) would
//! otherwise write thousands of identical lines an hour and never say when it was over.

use std::fmt::Display;
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
