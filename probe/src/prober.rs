//! [`Prober`]: one task per target on the owner's tokio runtime, plus the probe metrics.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::runner::{self, TargetMetrics};
use crate::{attempt, ProbeError, Report, Target, TargetKey};

/// Probe durations are small: loopback answers take well under a millisecond, a slow
/// instance seconds, and no attempt outlives its deadline (at most a few seconds).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Runs the probes of every target it is given and sends a [`Report`] after each attempt.
///
/// Every target gets its own task on the runtime `new` was called in. Dropping the
/// prober stops them all, as [`Prober::shutdown`] does.
pub struct Prober {
    reports: UnboundedSender<Report>,
    runtime: Handle,
    metrics: Metrics,
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    by_key: HashMap<TargetKey, JoinHandle<()>>,
    /// Targets per endpoint, so the endpoint's histogram goes when its last target does.
    per_endpoint: HashMap<Arc<str>, usize>,
}

#[derive(Clone)]
struct Metrics {
    attempts: IntCounterVec,
    duration: HistogramVec,
    transitions: IntCounterVec,
}

impl Prober {
    /// A prober with no targets. Must be called inside a tokio runtime; registers
    /// `rota_probe_attempts_total`, `rota_probe_duration_seconds` and
    /// `rota_probe_transitions_total` in `registry`.
    pub fn new(
        reports: UnboundedSender<Report>,
        registry: &Registry,
    ) -> Result<Prober, ProbeError> {
        let runtime = Handle::try_current().map_err(|_| ProbeError::NoRuntime)?;
        let metrics = Metrics {
            attempts: IntCounterVec::new(
                Opts::new(
                    "rota_probe_attempts_total",
                    "Probe attempts by result (success, refused, failed).",
                ),
                &["endpoint", "instance", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "rota_probe_duration_seconds",
                    "How long probe attempts took, deadline included.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["endpoint"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "rota_probe_transitions_total",
                    "Rotation verdict changes by new state (healthy, unhealthy).",
                ),
                &["endpoint", "instance", "to"],
            )?,
        };
        registry.register(Box::new(metrics.attempts.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.transitions.clone()))?;
        Ok(Prober {
            reports,
            runtime,
            metrics,
            tasks: Mutex::new(Tasks::default()),
        })
    }

    /// Starts probing `target`. A target with the same key is replaced: its task stops
    /// and the new one starts from scratch (unhealthy until its first success).
    pub fn add(&self, target: Target) {
        let handles = self.metrics.resolve(&target.key);
        let key = target.key.clone();
        let spec = target.spec.clone();
        let timing = spec.timing();
        let first_delay = jitter(&key, timing.interval);
        let target = Arc::new(target);
        let task = self.runtime.spawn(runner::run(
            key.clone(),
            spec.kind_name(),
            timing,
            first_delay,
            move || {
                let target = target.clone();
                async move { attempt::probe(&target).await }
            },
            self.reports.clone(),
            Some(handles),
        ));
        let mut tasks = self.lock();
        match tasks.by_key.insert(key.clone(), task) {
            Some(old) => old.abort(),
            None => *tasks.per_endpoint.entry(key.endpoint.clone()).or_default() += 1,
        }
        tracing::debug!(target_key = %key, kind = spec.kind_name(), ?first_delay, "probe target added");
    }

    /// Stops probing `key` (an attempt in flight is dropped, closing its connection) and
    /// removes its metric series. Unknown keys are ignored.
    pub fn remove(&self, key: &TargetKey) {
        let mut tasks = self.lock();
        let Some(task) = tasks.by_key.remove(key) else {
            return;
        };
        task.abort();
        let last_of_endpoint = match tasks.per_endpoint.get_mut(&key.endpoint) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                tasks.per_endpoint.remove(&key.endpoint);
                true
            }
        };
        drop(tasks);
        self.metrics.forget(key, last_of_endpoint);
        tracing::debug!(target_key = %key, "probe target removed");
    }

    /// Stops every probe.
    pub fn shutdown(&self) {
        let keys: Vec<TargetKey> = self.lock().by_key.keys().cloned().collect();
        for key in &keys {
            self.remove(key);
        }
    }

    /// Number of targets being probed.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: &TargetKey) -> bool {
        self.lock().by_key.contains_key(key)
    }

    fn lock(&self) -> MutexGuard<'_, Tasks> {
        // The map stays consistent even if a holder panicked: every update is one insert
        // or remove.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, task) in self.lock().by_key.drain() {
            task.abort();
        }
    }
}

impl Metrics {
    fn resolve(&self, key: &TargetKey) -> TargetMetrics {
        let (e, i) = (&*key.endpoint, &*key.instance);
        TargetMetrics {
            success: self.attempts.with_label_values(&[e, i, "success"]),
            refused: self.attempts.with_label_values(&[e, i, "refused"]),
            failed: self.attempts.with_label_values(&[e, i, "failed"]),
            duration: self.duration.with_label_values(&[e]),
            to_healthy: self.transitions.with_label_values(&[e, i, "healthy"]),
            to_unhealthy: self.transitions.with_label_values(&[e, i, "unhealthy"]),
        }
    }

    fn forget(&self, key: &TargetKey, endpoint_too: bool) {
        let (e, i) = (&*key.endpoint, &*key.instance);
        // Errors only say a series was never created; nothing to undo then.
        for result in ["success", "refused", "failed"] {
            let _ = self.attempts.remove_label_values(&[e, i, result]);
        }
        for to in ["healthy", "unhealthy"] {
            let _ = self.transitions.remove_label_values(&[e, i, to]);
        }
        if endpoint_too {
            let _ = self.duration.remove_label_values(&[e]);
        }
    }
}

/// Where in its first interval a target's probing starts, so that targets added together
/// do not probe in lockstep. Derived from a randomly keyed hash of the key and the clock.
fn jitter(key: &TargetKey, interval: Duration) -> Duration {
    let span = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    let mut h = RandomState::new().build_hasher();
    key.hash(&mut h);
    SystemTime::now().hash(&mut h);
    Duration::from_nanos(h.finish() % span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_inside_the_interval_and_varies() {
        let key = TargetKey::new("web", "web-0");
        let interval = Duration::from_millis(100);
        let draws: Vec<Duration> = (0..64).map(|_| jitter(&key, interval)).collect();
        assert!(draws.iter().all(|d| *d < interval));
        assert!(draws.iter().any(|d| *d != draws[0]));
    }

    #[test]
    fn new_outside_a_runtime_is_an_error() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let registry = Registry::new();
        assert!(matches!(
            Prober::new(tx, &registry),
            Err(ProbeError::NoRuntime)
        ));
    }
}
