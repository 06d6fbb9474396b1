//! The per-target loop: waits for its tick, runs one attempt under its deadline, reports.
//!
//! One loop per target, each in its own task: at most one attempt of a target is in
//! flight, and a target that black-holes its attempts only ever delays itself.

use std::future::Future;
use std::time::{Duration, SystemTime};

use prometheus::{Histogram, IntCounter};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, MissedTickBehavior};

use crate::attempt::Attempt;
use crate::health::{HealthState, Timing, Verdict};
use crate::{Outcome, Report, TargetKey};

/// The labelled metric handles of one target, resolved once when it is added.
#[derive(Clone)]
pub(crate) struct TargetMetrics {
    pub success: IntCounter,
    pub refused: IntCounter,
    pub failed: IntCounter,
    pub duration: Histogram,
    pub to_healthy: IntCounter,
    pub to_unhealthy: IntCounter,
}

/// Probes one target until its task is aborted or the report receiver goes away.
///
/// `attempt` is the probe itself (a fake one in tests); the loop owns the deadline, so an
/// attempt that never finishes becomes a `timeout after ...` failure.
pub(crate) async fn run<F, Fut>(
    key: TargetKey,
    kind: &'static str,
    timing: Timing,
    first_delay: Duration,
    mut attempt: F,
    reports: UnboundedSender<Report>,
    metrics: Option<TargetMetrics>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut me = Runner {
        key,
        kind,
        timing,
        state: HealthState::new(timing),
        was_healthy: false,
        last_success_wall: None,
        reports,
        metrics,
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + first_delay, timing.interval);
    // After an overlong pause, probe once and keep the interval from there rather than
    // firing a burst of catch-up attempts.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = until(me.state.expiry()) => {
                if !me.expire() {
                    return;
                }
                continue;
            }
        }

        let started = Instant::now();
        let mut pending = std::pin::pin!(tokio::time::timeout(timing.attempt_timeout, attempt()));
        // The timeout is a deadline, so it may run out while this attempt is in flight.
        let result = loop {
            tokio::select! {
                r = &mut pending => break r,
                _ = until(me.state.expiry()) => {
                    if !me.expire() {
                        return;
                    }
                }
            }
        };
        let duration = started.elapsed();
        let attempt = result.unwrap_or_else(|_| {
            Attempt::failed(format!("timeout after {}", human(timing.attempt_timeout)))
        });
        if !me.attempted(attempt, duration) {
            return;
        }
    }
}

struct Runner {
    key: TargetKey,
    kind: &'static str,
    timing: Timing,
    state: HealthState,
    /// The verdict before the current one, for transition counting (starts out of rotation).
    was_healthy: bool,
    last_success_wall: Option<SystemTime>,
    reports: UnboundedSender<Report>,
    metrics: Option<TargetMetrics>,
}

impl Runner {
    /// Handles a finished attempt; false when nobody listens any more.
    fn attempted(&mut self, attempt: Attempt, duration: Duration) -> bool {
        if attempt.outcome.is_success() {
            self.last_success_wall = Some(SystemTime::now());
        }
        let verdict = self
            .state
            .observe(Instant::now().into_std(), &attempt.outcome);
        if let Some(m) = &self.metrics {
            match attempt.outcome {
                Outcome::Success => m.success.inc(),
                Outcome::Refused(_) => m.refused.inc(),
                Outcome::Failed(_) => m.failed.inc(),
            }
            m.duration.observe(duration.as_secs_f64());
        }
        tracing::debug!(
            target_key = %self.key,
            kind = self.kind,
            result = attempt.outcome.label(),
            reason = %attempt.reason,
            ?duration,
            healthy = verdict.healthy,
            "probe attempt"
        );
        self.publish(verdict, attempt, duration)
    }

    /// The timeout ran out with no attempt finishing; false when nobody listens.
    fn expire(&mut self) -> bool {
        let Some(verdict) = self.state.expire(Instant::now().into_std()) else {
            return true;
        };
        let attempt = Attempt::failed(format!(
            "no successful probe for {}",
            human(self.timing.timeout)
        ));
        self.publish(verdict, attempt, Duration::ZERO)
    }

    fn publish(&mut self, verdict: Verdict, attempt: Attempt, duration: Duration) -> bool {
        if verdict.healthy != self.was_healthy {
            self.was_healthy = verdict.healthy;
            if let Some(m) = &self.metrics {
                if verdict.healthy {
                    m.to_healthy.inc();
                } else {
                    m.to_unhealthy.inc();
                }
            }
            tracing::info!(
                endpoint = %self.key.endpoint,
                instance = %self.key.instance,
                kind = self.kind,
                reason = %attempt.reason,
                "{}",
                if verdict.healthy {
                    "instance healthy: into rotation"
                } else {
                    "instance unhealthy: out of rotation"
                }
            );
        }
        let report = Report {
            key: self.key.clone(),
            healthy: verdict.healthy,
            changed: verdict.changed,
            outcome: attempt.outcome,
            reason: attempt.reason,
            duration,
            last_success: self.last_success_wall,
            kind: self.kind,
        };
        self.reports.send(report).is_ok()
    }
}

async fn until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// "2s", "80ms", "1.5s": durations as operators write them.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) && Duration::from_millis(d.subsec_millis().into()) == d {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    const OK: u8 = 0;
    const HANG: u8 = 1;
    const REFUSE: u8 = 2;

    /// Azure's timing: 15 s interval, 31 s timeout, 5 s attempts, rise 1, no fall.
    fn timing() -> Timing {
        Timing::from(&rota_config::ProbeConfig::guest_agent_default())
    }

    /// Starts the loop with a fake attempt whose behaviour the test switches.
    fn start(
        timing: Timing,
    ) -> (
        Arc<AtomicU8>,
        mpsc::UnboundedReceiver<Report>,
        tokio::task::JoinHandle<()>,
    ) {
        let mode = Arc::new(AtomicU8::new(OK));
        let (tx, rx) = mpsc::unbounded_channel();
        let m = mode.clone();
        let task = tokio::spawn(run(
            TargetKey::new("web", "web-0"),
            "fake",
            timing,
            Duration::ZERO,
            move || {
                let mode = m.load(Ordering::SeqCst);
                async move {
                    match mode {
                        OK => Attempt::success("ok"),
                        REFUSE => Attempt::refused("http 503"),
                        _ => std::future::pending().await,
                    }
                }
            },
            tx,
            None,
        ));
        (mode, rx, task)
    }

    #[tokio::test(start_paused = true)]
    async fn silent_target_leaves_after_timeout_not_before() {
        let t0 = Instant::now();
        let (mode, mut rx, task) = start(timing());
        let at = |r: &Report| (r.healthy, r.changed);

        // t=0: first success, into rotation.
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(at(&r), (true, true));
        assert_eq!(r.outcome, Outcome::Success);
        assert!(r.last_success.is_some());

        // t=15: still fine; then the target stops answering.
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(15));
        assert_eq!(at(&r), (true, false));
        mode.store(HANG, Ordering::SeqCst);

        // t=30 attempt times out at t=35: 20 s without success, still in rotation.
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(35));
        assert_eq!(r.outcome, Outcome::Failed("timeout after 5s".into()));
        assert_eq!(at(&r), (true, false));

        // The t=45 attempt is in flight when the 31 s since the last success (t=15) run
        // out at t=46: out of rotation right then, not at the end of the attempt.
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(46));
        assert_eq!(at(&r), (false, true));
        assert_eq!(r.reason, "no successful probe for 31s");
        assert_eq!(r.duration, Duration::ZERO);

        // The attempt itself still reports at t=50, unchanged.
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(50));
        assert_eq!(at(&r), (false, false));

        // Recovery on the first success: the t=60 attempt.
        mode.store(OK, Ordering::SeqCst);
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
        assert_eq!(at(&r), (true, true));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn refusal_is_immediate_and_recovery_is_first_success() {
        let t0 = Instant::now();
        let (mode, mut rx, task) = start(timing());
        let r = rx.recv().await.unwrap();
        assert!(r.healthy);
        mode.store(REFUSE, Ordering::SeqCst);
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(15));
        assert!(!r.healthy && r.changed);
        assert_eq!(r.outcome, Outcome::Refused("http 503".into()));
        mode.store(OK, Ordering::SeqCst);
        let r = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        assert!(r.healthy && r.changed);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn never_answering_target_stays_out_and_attempts_keep_their_pace() {
        let t0 = Instant::now();
        let (mode, mut rx, task) = start(timing());
        // Set before the task first runs, so every attempt black-holes.
        mode.store(HANG, Ordering::SeqCst);
        for k in 0..5u64 {
            let r = rx.recv().await.unwrap();
            // Each attempt starts on its tick and ends at its own deadline.
            assert_eq!(t0.elapsed(), Duration::from_secs(15 * k + 5));
            assert_eq!(r.outcome, Outcome::Failed("timeout after 5s".into()));
            assert_eq!((r.healthy, r.changed), (false, k == 0));
        }
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn first_report_is_unhealthy_until_a_success() {
        let (mode, mut rx, task) = start(timing());
        mode.store(REFUSE, Ordering::SeqCst);
        let r = rx.recv().await.unwrap();
        assert!(!r.healthy && r.changed);
        assert!(r.last_success.is_none());
        let r = rx.recv().await.unwrap();
        assert!(!r.healthy && !r.changed);
        task.abort();
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(80)), "80ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }
}
