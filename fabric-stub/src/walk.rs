//! The update-domain walk: one step (an update domain, or a host) down and back up at a time.
//!
//! A rolling update walks a role's update domains; a host update walks hosts.
//! Both are the same state machine, written once here over [`StepActions`] so
//! it can be tested with paused time and fakes:
//!
//! 1. `drain`: the step's instances go `Stopping` (out of rotation);
//! 2. `stop`: they get at most `shutdown_grace` to stop; after that `kill`;
//! 3. `start`: they start again (on the new version, or after the host reboot);
//! 4. they have at most `ready_deadline` to be `Ready`; if they are not, the walk
//!    stops there with an error: the next step never starts while this one is
//!    down, so two steps are never down at once;
//! 5. in manual mode, the walk then waits for an operator's "continue".

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

/// What the walk asks of the fabric for one step.
pub trait StepActions<S> {
    /// Takes the step's instances out of rotation (`Stopping`).
    fn drain(&self, step: &S) -> impl Future<Output = ()> + Send;
    /// Asks them to stop; the walk bounds this by `shutdown_grace`.
    fn stop(&self, step: &S) -> impl Future<Output = ()> + Send;
    /// Kills whatever is left after the grace.
    fn kill(&self, step: &S) -> impl Future<Output = ()> + Send;
    /// Starts them again.
    fn start(&self, step: &S) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether all of them are `Ready`.
    fn ready(&self, step: &S) -> impl Future<Output = bool> + Send;
    /// Progress, for the API and the logs.
    fn progress(&self, event: WalkEvent);
}

/// The walk's timing and mode.
#[derive(Clone, Debug)]
pub struct WalkPlan {
    pub shutdown_grace: Duration,
    pub ready_deadline: Duration,
    /// Wait for [`Notify`] between steps.
    pub manual: bool,
    /// How often readiness is checked.
    pub poll: Duration,
}

/// What happened, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum WalkEvent {
    StepStarted {
        step: String,
        index: usize,
        of: usize,
    },
    Stopped {
        step: String,
        forced: bool,
    },
    Started {
        step: String,
    },
    StepReady {
        step: String,
    },
    WaitingForContinue {
        next: String,
    },
    Finished,
    Failed {
        step: String,
        error: String,
    },
}

/// Why a walk stopped early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("{step}: not Ready within the ready deadline ({deadline:?}); the walk stops here")]
    NotReady { step: String, deadline: Duration },
    #[error("{step}: could not start: {error}")]
    StartFailed { step: String, error: String },
}

/// Walks `steps` in order; see the module docs. `resume` is notified by an
/// operator's "continue" in manual mode.
pub async fn walk<S: Debug + Sync, A: StepActions<S> + Sync>(
    steps: &[S],
    plan: &WalkPlan,
    actions: &A,
    resume: &Notify,
) -> Result<(), WalkError> {
    let name = |s: &S| format!("{s:?}");
    for (index, step) in steps.iter().enumerate() {
        let label = name(step);
        actions.progress(WalkEvent::StepStarted {
            step: label.clone(),
            index,
            of: steps.len(),
        });
        actions.drain(step).await;
        let forced = tokio::time::timeout(plan.shutdown_grace, actions.stop(step))
            .await
            .is_err();
        if forced {
            actions.kill(step).await;
        }
        actions.progress(WalkEvent::Stopped {
            step: label.clone(),
            forced,
        });
        if let Err(error) = actions.start(step).await {
            actions.progress(WalkEvent::Failed {
                step: label.clone(),
                error: error.clone(),
            });
            return Err(WalkError::StartFailed { step: label, error });
        }
        actions.progress(WalkEvent::Started {
            step: label.clone(),
        });
        let deadline = tokio::time::Instant::now() + plan.ready_deadline;
        loop {
            if actions.ready(step).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let error = WalkError::NotReady {
                    step: label.clone(),
                    deadline: plan.ready_deadline,
                };
                actions.progress(WalkEvent::Failed {
                    step: label,
                    error: error.to_string(),
                });
                return Err(error);
            }
            tokio::time::sleep(plan.poll).await;
        }
        actions.progress(WalkEvent::StepReady { step: label });
        if plan.manual {
            if let Some(next) = steps.get(index + 1) {
                actions.progress(WalkEvent::WaitingForContinue { next: name(next) });
                resume.notified().await;
            }
        }
    }
    actions.progress(WalkEvent::Finished);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    /// A fake fabric: each update domain is "down" from drain until it is
    /// Ready, which happens `ready_after` after start (or never).
    #[derive(Default)]
    struct Fake {
        down: Mutex<BTreeSet<u32>>,
        max_down: Mutex<usize>,
        ready_at: Mutex<Vec<(u32, Instant)>>,
        events: Mutex<Vec<WalkEvent>>,
        stop_takes: Duration,
        ready_after: Option<Duration>,
        killed: Mutex<Vec<u32>>,
    }

    impl StepActions<u32> for Fake {
        async fn drain(&self, ud: &u32) {
            let mut down = self.down.lock().unwrap();
            down.insert(*ud);
            let n = down.len();
            let mut max = self.max_down.lock().unwrap();
            *max = (*max).max(n);
        }
        async fn stop(&self, _: &u32) {
            tokio::time::sleep(self.stop_takes).await;
        }
        async fn kill(&self, ud: &u32) {
            self.killed.lock().unwrap().push(*ud);
        }
        async fn start(&self, ud: &u32) -> Result<(), String> {
            if let Some(after) = self.ready_after {
                self.ready_at
                    .lock()
                    .unwrap()
                    .push((*ud, Instant::now() + after));
            }
            Ok(())
        }
        async fn ready(&self, ud: &u32) -> bool {
            let ready = self
                .ready_at
                .lock()
                .unwrap()
                .iter()
                .any(|(u, at)| u == ud && Instant::now() >= *at);
            if ready {
                self.down.lock().unwrap().remove(ud);
            }
            ready
        }
        fn progress(&self, event: WalkEvent) {
            self.events.lock().unwrap().push(event);
        }
    }

    fn plan(manual: bool) -> WalkPlan {
        WalkPlan {
            shutdown_grace: Duration::from_secs(300),
            ready_deadline: Duration::from_secs(900),
            manual,
            poll: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn walks_update_domains_in_order_never_two_down() {
        let fake = Fake {
            stop_takes: Duration::from_secs(3),
            ready_after: Some(Duration::from_secs(20)),
            ..Fake::default()
        };
        let start = Instant::now();
        walk(&[0, 1, 2, 3, 4], &plan(false), &fake, &Notify::new())
            .await
            .unwrap();
        assert_eq!(*fake.max_down.lock().unwrap(), 1);
        assert!(fake.killed.lock().unwrap().is_empty());
        let events = fake.events.lock().unwrap();
        let order: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                WalkEvent::StepStarted { step, .. } => Some(step.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(order, ["0", "1", "2", "3", "4"]);
        assert_eq!(events.last(), Some(&WalkEvent::Finished));
        // Each step: 3 s to stop, 20 s to Ready (polled each second).
        assert!(
            start.elapsed() >= Duration::from_secs(5 * 23),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_over_the_grace_is_killed_and_the_walk_goes_on() {
        let fake = Fake {
            stop_takes: Duration::from_secs(3600),
            ready_after: Some(Duration::ZERO),
            ..Fake::default()
        };
        walk(&[0, 1], &plan(false), &fake, &Notify::new())
            .await
            .unwrap();
        assert_eq!(*fake.killed.lock().unwrap(), [0, 1]);
        assert!(fake.events.lock().unwrap().contains(&WalkEvent::Stopped {
            step: "0".into(),
            forced: true
        }));
    }

    #[tokio::test(start_paused = true)]
    async fn not_ready_within_the_deadline_stops_the_walk_there() {
        let fake = Fake {
            ready_after: None,
            ..Fake::default()
        };
        let start = Instant::now();
        let err = walk(&[0, 1, 2], &plan(false), &fake, &Notify::new())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            WalkError::NotReady {
                step: "0".into(),
                deadline: Duration::from_secs(900)
            }
        );
        assert!(start.elapsed() >= Duration::from_secs(900));
        assert_eq!(
            *fake.down.lock().unwrap(),
            BTreeSet::from([0]),
            "UD 1 was never touched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn manual_mode_waits_for_continue_between_steps() {
        let fake = Arc::new(Fake {
            ready_after: Some(Duration::ZERO),
            ..Fake::default()
        });
        let resume = Arc::new(Notify::new());
        let task = {
            let (fake, resume) = (fake.clone(), resume.clone());
            tokio::spawn(async move { walk(&[0, 1], &plan(true), &*fake, &resume).await })
        };
        // Hours pass: without "continue" the walk stays after UD 0.
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert!(!task.is_finished());
        assert_eq!(
            fake.events.lock().unwrap().last(),
            Some(&WalkEvent::WaitingForContinue { next: "1".into() })
        );
        resume.notify_one();
        task.await.unwrap().unwrap();
        assert_eq!(
            fake.events.lock().unwrap().last(),
            Some(&WalkEvent::Finished)
        );
    }
}
