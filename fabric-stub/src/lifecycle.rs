//! The guest agent's view of its role process, as a pure state machine: crashes, backoff, readiness, Busy.

use std::collections::VecDeque;
use std::time::Duration;

use rota_probe::agent::AgentState;
use tokio::time::Instant;

/// How the agent reacts to crashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Wait before the first restart (default 250 ms); doubles per crash in the window.
    pub backoff_initial: Duration,
    /// Longest wait between restarts (default 10 s).
    pub backoff_max: Duration,
    /// Crashes within `crash_window` that make a crash loop (default 5).
    pub crash_limit: u32,
    /// Default 60 s.
    pub crash_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
        }
    }
}

/// What to do after the role process exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again after this long.
    RestartAfter(Duration),
    /// A crash loop: stay `Failed`, do not restart.
    GiveUp,
    /// It was being stopped on purpose: `Stopped`.
    Stopped,
}

/// The role process's lifecycle. Only the agent's supervision loop drives it;
/// the status endpoint reads [`Lifecycle::state`].
#[derive(Clone, Debug)]
pub struct Lifecycle {
    policy: Policy,
    state: AgentState,
    /// Crash times within the window, oldest first.
    crashes: VecDeque<Instant>,
    busy: bool,
    /// Whether the current process has answered a probe since it started:
    /// before that a failed probe means `Starting`, after it `Unresponsive`.
    answered: bool,
    stopping: bool,
    detail: String,
}

impl Lifecycle {
    pub fn new(policy: Policy) -> Lifecycle {
        Lifecycle {
            policy,
            state: AgentState::Starting,
            crashes: VecDeque::new(),
            busy: false,
            answered: false,
            stopping: false,
            detail: "starting the role process".into(),
        }
    }

    pub fn state(&self) -> AgentState {
        self.state
    }

    /// Free text for operators, served as the status `detail`.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Crashes counted in the current window.
    pub fn recent_crashes(&self) -> usize {
        self.crashes.len()
    }

    /// The role process was (re)started.
    pub fn started(&mut self) {
        self.answered = false;
        if !self.stopping {
            self.set(
                AgentState::Starting,
                "role process started, waiting for it to answer",
            );
        }
    }

    /// The agent's own probe of the role's port: `ok` when it answered in time.
    pub fn probed(&mut self, ok: bool) {
        if self.stopping || matches!(self.state, AgentState::Failed | AgentState::Recycling) {
            return;
        }
        if ok {
            self.answered = true;
            if self.busy {
                self.set(AgentState::Busy, "the role declared itself busy");
            } else {
                self.set(AgentState::Ready, "serving");
            }
        } else if self.answered {
            // SPEC: a hung role keeps running but is never reported Ready.
            self.set(
                AgentState::Unresponsive,
                "the role stopped answering its probe",
            );
        } else {
            self.set(
                AgentState::Starting,
                "waiting for the role to answer its probe",
            );
        }
    }

    /// The role declared itself busy (`true`) or ready again (`false`).
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
        match (busy, self.state) {
            (true, AgentState::Ready) => {
                self.set(AgentState::Busy, "the role declared itself busy")
            }
            (false, AgentState::Busy) => self.set(AgentState::Ready, "serving"),
            _ => {}
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// A stop was asked for: report `Stopping` from now on.
    pub fn stopping(&mut self) {
        self.stopping = true;
        self.set(AgentState::Stopping, "stopping on request");
    }

    /// The role process exited with `status` (text for operators) at `now`.
    pub fn exited(&mut self, status: &str, now: Instant) -> AfterExit {
        if self.stopping {
            self.set(AgentState::Stopped, &format!("stopped ({status})"));
            return AfterExit::Stopped;
        }
        while let Some(first) = self.crashes.front() {
            if now.duration_since(*first) >= self.policy.crash_window {
                self.crashes.pop_front();
            } else {
                break;
            }
        }
        self.crashes.push_back(now);
        let count = self.crashes.len() as u32;
        if count >= self.policy.crash_limit {
            let detail = format!(
                "crash loop: {count} exits within {:?}, last {status}; not restarting",
                self.policy.crash_window
            );
            self.set(AgentState::Failed, &detail);
            return AfterExit::GiveUp;
        }
        // Doubling per crash in the window: a process that crashed long ago
        // and once more now restarts quickly again.
        let factor = 1u32 << (count - 1).min(16);
        let wait = self
            .policy
            .backoff_initial
            .saturating_mul(factor)
            .min(self.policy.backoff_max);
        self.set(
            AgentState::Recycling,
            &format!("role process exited ({status}); restarting in {wait:?}"),
        );
        AfterExit::RestartAfter(wait)
    }

    fn set(&mut self, state: AgentState, detail: &str) {
        self.state = state;
        self.detail = detail.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            crash_limit: 4,
            crash_window: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn crash_restarts_with_capped_backoff_then_fails_in_a_loop() {
        let mut l = Lifecycle::new(policy());
        l.started();
        l.probed(true);
        assert_eq!(l.state(), AgentState::Ready);
        let t0 = Instant::now();
        assert_eq!(
            l.exited("exit 1", t0),
            AfterExit::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            l.state(),
            AgentState::Recycling,
            "not Ready while restarting"
        );
        l.started();
        assert_eq!(l.state(), AgentState::Starting);
        assert_eq!(
            l.exited("exit 1", t0 + Duration::from_secs(1)),
            AfterExit::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            l.exited("exit 1", t0 + Duration::from_secs(2)),
            AfterExit::RestartAfter(Duration::from_millis(400))
        );
        assert_eq!(
            l.exited("exit 1", t0 + Duration::from_secs(3)),
            AfterExit::GiveUp
        );
        assert_eq!(l.state(), AgentState::Failed);
        l.probed(true);
        assert_eq!(
            l.state(),
            AgentState::Failed,
            "a failed instance never reports Ready"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped_and_old_crashes_leave_the_window() {
        let mut l = Lifecycle::new(Policy {
            crash_limit: 100,
            ..policy()
        });
        let t0 = Instant::now();
        let mut last = AfterExit::GiveUp;
        for i in 0..10 {
            last = l.exited("exit 1", t0 + Duration::from_millis(i));
        }
        assert_eq!(last, AfterExit::RestartAfter(Duration::from_millis(500)));
        // Eleven seconds later the ten crashes are out of the window.
        let later = l.exited("exit 1", t0 + Duration::from_secs(11));
        assert_eq!(later, AfterExit::RestartAfter(Duration::from_millis(100)));
        assert_eq!(l.recent_crashes(), 1);
    }

    #[test]
    fn hang_is_unresponsive_not_ready_and_starting_before_first_answer() {
        let mut l = Lifecycle::new(policy());
        l.started();
        l.probed(false);
        assert_eq!(l.state(), AgentState::Starting);
        l.probed(true);
        l.probed(false);
        assert_eq!(l.state(), AgentState::Unresponsive);
        l.probed(true);
        assert_eq!(l.state(), AgentState::Ready);
    }

    #[test]
    fn busy_leaves_ready_without_restart_and_comes_back() {
        let mut l = Lifecycle::new(policy());
        l.started();
        l.probed(true);
        l.set_busy(true);
        assert_eq!(l.state(), AgentState::Busy);
        l.probed(true);
        assert_eq!(l.state(), AgentState::Busy, "probes do not override Busy");
        l.set_busy(false);
        assert_eq!(l.state(), AgentState::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn exit_while_stopping_is_stopped_not_a_crash() {
        let mut l = Lifecycle::new(policy());
        l.started();
        l.probed(true);
        l.stopping();
        assert_eq!(l.state(), AgentState::Stopping);
        l.probed(true);
        assert_eq!(l.state(), AgentState::Stopping);
        assert_eq!(l.exited("signal 15", Instant::now()), AfterExit::Stopped);
        assert_eq!(l.state(), AgentState::Stopped);
        assert_eq!(l.recent_crashes(), 0);
    }
}
