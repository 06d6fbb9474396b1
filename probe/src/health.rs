//! The rotation state machine: turns a stream of attempt outcomes into healthy / unhealthy.
//!
//! It is pure (no sockets, no clock of its own: every call is handed `now`), so the
//! timing rules can be tested exhaustively. The rules, after SPEC rotation rule 2:
//!
//! - A target starts **unhealthy**: a new instance joins rotation on its first success.
//! - `rise` successes in a row bring it back (default 1, the first success).
//! - A **positive refusal** (HTTP status other than 200, TCP refused/reset, agent state
//!   other than `Ready`) takes it out at once.
//! - A **failure** (timeout, garbage, TLS error, ...) takes it out only once `timeout` has
//!   passed since the last success, or after `fall` non-successes in a row when set.
//! - The timeout is a deadline, not a count: [`HealthState::expiry`] tells the driver when
//!   it runs out so the verdict can flip on time even while no attempt is finishing.

use std::time::{Duration, Instant};

use rota_config::ProbeConfig;

use crate::Outcome;

/// The timing of one probe, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Time between the starts of two attempts.
    pub interval: Duration,
    /// No success for this long takes a target out.
    pub timeout: Duration,
    /// Deadline of one attempt (shorter than `interval`).
    pub attempt_timeout: Duration,
    /// Successes in a row needed to come back; at least 1.
    pub rise: u32,
    /// Non-successes in a row that take a target out before `timeout`, if set.
    pub fall: Option<u32>,
}

impl From<&ProbeConfig> for Timing {
    fn from(cfg: &ProbeConfig) -> Timing {
        Timing {
            interval: cfg.interval,
            timeout: cfg.timeout,
            attempt_timeout: cfg.attempt_timeout,
            rise: cfg.rise,
            fall: cfg.fall,
        }
    }
}

/// What the state machine concluded after an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// In rotation?
    pub healthy: bool,
    /// Differs from the previous verdict (the very first verdict always counts as changed).
    pub changed: bool,
}

/// Why a target left rotation; used for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Refused,
    Timeout,
    Fall,
}

/// Per-target rotation state.
#[derive(Clone, Debug)]
pub struct HealthState {
    timing: Timing,
    healthy: bool,
    /// Whether any verdict has been handed out yet (the first one is always "changed").
    announced: bool,
    last_success: Option<Instant>,
    successes_in_row: u32,
    misses_in_row: u32,
    last_cause: Option<Cause>,
}

impl HealthState {
    /// A fresh target: unhealthy until its first success.
    pub fn new(timing: Timing) -> HealthState {
        HealthState {
            timing,
            healthy: false,
            announced: false,
            last_success: None,
            successes_in_row: 0,
            misses_in_row: 0,
            last_cause: None,
        }
    }

    /// The current verdict, without changing anything.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// When the last success was seen.
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// Why the target last left rotation, if it ever did.
    pub fn last_cause(&self) -> Option<Cause> {
        self.last_cause
    }

    /// The instant at which a healthy target runs out of time without a success.
    /// `None` while unhealthy: there is nothing to expire.
    pub fn expiry(&self) -> Option<Instant> {
        if !self.healthy {
            return None;
        }
        self.last_success.map(|t| t + self.timing.timeout)
    }

    /// Feeds one attempt's outcome, finished at `now`.
    pub fn observe(&mut self, now: Instant, outcome: &Outcome) -> Verdict {
        let before = self.healthy;
        match outcome {
            Outcome::Success => {
                self.last_success = Some(now);
                self.misses_in_row = 0;
                self.successes_in_row = self.successes_in_row.saturating_add(1);
                if self.successes_in_row >= self.timing.rise.max(1) {
                    self.healthy = true;
                }
            }
            Outcome::Refused(_) => {
                self.successes_in_row = 0;
                self.misses_in_row = self.misses_in_row.saturating_add(1);
                self.take_out(Cause::Refused);
            }
            Outcome::Failed(_) => {
                self.successes_in_row = 0;
                self.misses_in_row = self.misses_in_row.saturating_add(1);
                if self.timed_out(now) {
                    self.take_out(Cause::Timeout);
                } else if matches!(self.timing.fall, Some(f) if self.misses_in_row >= f.max(1)) {
                    self.take_out(Cause::Fall);
                }
            }
        }
        self.verdict(before)
    }

    /// Checks the timeout with no new attempt; returns a verdict only if it flipped.
    pub fn expire(&mut self, now: Instant) -> Option<Verdict> {
        if self.healthy && self.timed_out(now) {
            let before = self.healthy;
            self.take_out(Cause::Timeout);
            Some(self.verdict(before))
        } else {
            None
        }
    }

    fn timed_out(&self, now: Instant) -> bool {
        // Unhealthy targets need no timeout, and before the first success a target is
        // unhealthy anyway, so "no success ever" never has to be measured.
        match self.last_success {
            Some(t) => now.saturating_duration_since(t) >= self.timing.timeout,
            None => true,
        }
    }

    fn take_out(&mut self, cause: Cause) {
        if self.healthy {
            self.last_cause = Some(cause);
        }
        self.healthy = false;
    }

    fn verdict(&mut self, before: bool) -> Verdict {
        let changed = !self.announced || before != self.healthy;
        self.announced = true;
        Verdict {
            healthy: self.healthy,
            changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azure's timing: 15 s interval, 31 s timeout, 5 s attempts, rise 1, no fall.
    fn timing() -> Timing {
        Timing::from(&ProbeConfig::guest_agent_default())
    }

    fn ok() -> Outcome {
        Outcome::Success
    }
    fn refused() -> Outcome {
        Outcome::Refused("http 503".into())
    }
    fn failed() -> Outcome {
        Outcome::Failed("timeout after 5s".into())
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn starts_unhealthy_and_first_verdict_is_a_change() {
        let t0 = Instant::now();
        let mut h = HealthState::new(timing());
        assert!(!h.healthy());
        assert_eq!(h.expiry(), None);
        let v = h.observe(t0, &failed());
        assert_eq!(
            v,
            Verdict {
                healthy: false,
                changed: true
            }
        );
        let v = h.observe(secs(t0, 15), &failed());
        assert_eq!(
            v,
            Verdict {
                healthy: false,
                changed: false
            }
        );
    }

    #[test]
    fn first_success_brings_it_in() {
        let t0 = Instant::now();
        let mut h = HealthState::new(timing());
        let v = h.observe(t0, &ok());
        assert_eq!(
            v,
            Verdict {
                healthy: true,
                changed: true
            }
        );
        let v = h.observe(secs(t0, 15), &ok());
        assert!(v.healthy && !v.changed);
        assert_eq!(h.expiry(), Some(secs(t0, 15 + 31)));
    }

    #[test]
    fn failures_take_it_out_only_after_timeout() {
        let t0 = Instant::now();
        let mut h = HealthState::new(timing());
        h.observe(t0, &ok());
        // Two missed probes finishing inside the timeout keep it in.
        assert!(h.observe(secs(t0, 15), &failed()).healthy);
        assert!(h.observe(secs(t0, 30), &failed()).healthy);
        // Exactly `timeout` after the last success it is out.
        let v = h.observe(secs(t0, 31), &failed());
        assert_eq!(
            v,
            Verdict {
                healthy: false,
                changed: true
            }
        );
        assert_eq!(h.last_cause(), Some(Cause::Timeout));
        assert_eq!(h.expiry(), None);
    }

    #[test]
    fn expire_flips_without_an_attempt_and_not_before() {
        let t0 = Instant::now();
        let mut h = HealthState::new(timing());
        h.observe(t0, &ok());
        assert_eq!(h.expire(secs(t0, 30)), None);
        assert!(h.healthy());
        let v = h.expire(secs(t0, 31)).expect("expired");
        assert!(!v.healthy && v.changed);
        // Nothing further to expire once out.
        assert_eq!(h.expire(secs(t0, 100)), None);
    }

    #[test]
    fn refusal_is_immediate() {
        let t0 = Instant::now();
        let mut h = HealthState::new(timing());
        h.observe(t0, &ok());
        let v = h.observe(secs(t0, 1), &refused());
        assert!(!v.healthy && v.changed);
        assert_eq!(h.last_cause(), Some(Cause::Refused));
        // And the next success is enough to come back.
        let v = h.observe(secs(t0, 2), &ok());
        assert!(v.healthy && v.changed);
    }

    #[test]
    fn rise_needs_successes_in_a_row() {
        let t0 = Instant::now();
        let mut h = HealthState::new(Timing {
            rise: 3,
            ..timing()
        });
        assert!(!h.observe(t0, &ok()).healthy);
        assert!(!h.observe(secs(t0, 1), &ok()).healthy);
        // A miss resets the run.
        assert!(!h.observe(secs(t0, 2), &failed()).healthy);
        assert!(!h.observe(secs(t0, 3), &ok()).healthy);
        assert!(!h.observe(secs(t0, 4), &ok()).healthy);
        let v = h.observe(secs(t0, 5), &ok());
        assert!(v.healthy && v.changed);
        // Once in, a single success keeps it in; rise only gates coming back.
        assert!(h.observe(secs(t0, 6), &failed()).healthy);
        assert!(h.observe(secs(t0, 7), &ok()).healthy);
    }

    #[test]
    fn fall_takes_it_out_before_timeout() {
        let t0 = Instant::now();
        let mut h = HealthState::new(Timing {
            fall: Some(2),
            ..timing()
        });
        h.observe(t0, &ok());
        assert!(h.observe(secs(t0, 1), &failed()).healthy);
        let v = h.observe(secs(t0, 2), &failed());
        assert!(!v.healthy && v.changed);
        assert_eq!(h.last_cause(), Some(Cause::Fall));
    }

    #[test]
    fn success_resets_the_timeout() {
        let t0 = Instant::now();
        let mut h = HealthState::new(timing());
        h.observe(t0, &ok());
        h.observe(secs(t0, 20), &failed());
        h.observe(secs(t0, 25), &ok());
        // 40 s after the first success but only 15 s after the last one.
        assert!(h.observe(secs(t0, 40), &failed()).healthy);
        assert!(!h.observe(secs(t0, 56), &failed()).healthy);
    }
}
