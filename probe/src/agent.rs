//! The guest-agent status protocol: what an instance's agent answers, and how rota reads it.
//!
//! Any program can be a rota guest agent; the fabric stub's agent is just one of them.
//! The contract, version 1:
//!
//! # Request
//!
//! rota opens a TCP connection to the instance's agent address and sends
//!
//! ```text
//! GET /rota/agent/v1/status HTTP/1.1
//! Host: <agent ip>:<agent port>
//! Connection: close
//! User-Agent: rota-probe/<version>
//! ```
//!
//! one request per connection, then closes it. The agent must answer within the probe's
//! attempt deadline (default the smaller of 5 s and 4/5 of the interval).
//!
//! # Response
//!
//! Status `200` and a JSON object (content type `application/json` is customary but not
//! checked), at most 16 KiB in total including headers:
//!
//! ```json
//! {"state":"Ready","instance":"web-0","detail":"serving","since":"2024-05-01T12:00:00Z"}
//! ```
//!
//! | field      | required | meaning                                                        |
//! |------------|----------|----------------------------------------------------------------|
//! | `state`    | yes      | one of the [`AgentState`] names, spelled exactly as below      |
//! | `instance` | no       | the instance the agent supervises, e.g. `web-0` (for logs)     |
//! | `detail`   | no       | free text for operators ("warming cache", "exit code 3", ...)  |
//! | `since`    | no       | when the current state was entered, RFC 3339 UTC               |
//!
//! Unknown fields are ignored, so agents may add their own.
//!
//! States: `Starting`, `Ready`, `Busy`, `Stopping`, `Recycling`, `Unresponsive`,
//! `Failed`, `Stopped`.
//!
//! # Verdict
//!
//! - `200` with `state` `Ready`: healthy.
//! - `200` with any other state: a positive refusal, reported as `agent: Busy` (etc.);
//!   the instance leaves rotation at once. A `state` string that is not one of the
//!   names above (a newer agent's state, say) is also a refusal: only `Ready` is healthy.
//! - any status other than `200`: a positive refusal, `agent: http 503`.
//! - a body that is not JSON, or has no string `state`: a failure, `agent: garbage ...`,
//!   which takes the instance out only once the probe timeout has passed.
//! - no answer within the deadline, connection refused/reset: as for any probe.

use serde::{Deserialize, Serialize};

use crate::Outcome;

/// The path every agent serves its status on.
pub const STATUS_PATH: &str = "/rota/agent/v1/status";

/// The lifecycle state an agent reports for its instance. Only [`AgentState::Ready`]
/// is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentState {
    /// The role process is starting and has not reported ready yet.
    Starting,
    /// Serving: the only healthy state.
    Ready,
    /// The role asked to be taken out of rotation without being restarted.
    Busy,
    /// Shutting down (an update or a scale-in); draining.
    Stopping,
    /// Being restarted by its agent or the fabric.
    Recycling,
    /// The role process stopped answering its agent.
    Unresponsive,
    /// The role process failed and is not being restarted for now.
    Failed,
    /// Stopped on purpose.
    Stopped,
}

impl AgentState {
    /// Every state, in lifecycle order.
    pub const ALL: [AgentState; 8] = [
        AgentState::Starting,
        AgentState::Ready,
        AgentState::Busy,
        AgentState::Stopping,
        AgentState::Recycling,
        AgentState::Unresponsive,
        AgentState::Failed,
        AgentState::Stopped,
    ];

    /// The wire spelling, e.g. `"Ready"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "Starting",
            AgentState::Ready => "Ready",
            AgentState::Busy => "Busy",
            AgentState::Stopping => "Stopping",
            AgentState::Recycling => "Recycling",
            AgentState::Unresponsive => "Unresponsive",
            AgentState::Failed => "Failed",
            AgentState::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of a status answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Required.
    pub state: AgentState,
    /// The instance the agent supervises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the current state was entered, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl AgentStatus {
    /// A status with only the required field.
    pub fn new(state: AgentState) -> AgentStatus {
        AgentStatus {
            state,
            instance: None,
            detail: None,
            since: None,
        }
    }
}

/// Judges a complete status answer: the HTTP status and the body bytes.
/// Returns the outcome and the human reason.
pub(crate) fn judge(status: u16, body: &[u8]) -> (Outcome, String) {
    if status != 200 {
        let reason = format!("agent: http {status}");
        return (Outcome::Refused(reason.clone()), reason);
    }
    match serde_json::from_slice::<AgentStatus>(body) {
        Ok(s) if s.state == AgentState::Ready => (Outcome::Success, "agent: Ready".to_string()),
        Ok(s) => {
            let reason = format!("agent: {}", s.state);
            (Outcome::Refused(reason.clone()), reason)
        }
        Err(e) => {
            // A newer agent may report a state this build does not know: still an
            // explicit "not Ready", so it refuses rather than counts as garbage.
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
                if let Some(serde_json::Value::String(state)) = map.get("state") {
                    let reason = format!("agent: unknown state {:?}", clip(state, 64));
                    return (Outcome::Refused(reason.clone()), reason);
                }
            }
            let reason = format!("agent: garbage response: {}", clip(&e.to_string(), 120));
            (Outcome::Failed(reason.clone()), reason)
        }
    }
}

/// Shortens peer-controlled text before it lands in a log line or a label.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_serialize_as_their_names() {
        for s in AgentState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            let back: AgentState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn status_round_trips_and_skips_absent_fields() {
        let s = AgentStatus::new(AgentState::Busy);
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"state":"Busy"}"#);
        let full = AgentStatus {
            state: AgentState::Ready,
            instance: Some("web-0".into()),
            detail: Some("warm".into()),
            since: Some("2024-05-01T12:00:00Z".into()),
        };
        let json = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<AgentStatus>(&json).unwrap(), full);
    }

    #[test]
    fn judge_maps_states() {
        let (o, r) = judge(200, br#"{"state":"Ready","extra":1}"#);
        assert_eq!((o, r.as_str()), (Outcome::Success, "agent: Ready"));
        let (o, r) = judge(200, br#"{"state":"Busy"}"#);
        assert_eq!(o, Outcome::Refused("agent: Busy".into()));
        assert_eq!(r, "agent: Busy");
        let (o, _) = judge(200, br#"{"state":"Draining"}"#);
        assert!(matches!(o, Outcome::Refused(ref r) if r.contains("unknown state")));
        let (o, _) = judge(503, br#"{"state":"Ready"}"#);
        assert_eq!(o, Outcome::Refused("agent: http 503".into()));
        let (o, _) = judge(200, b"hello");
        assert!(matches!(o, Outcome::Failed(ref r) if r.starts_with("agent: garbage")));
        let (o, _) = judge(200, br#"{"instance":"web-0"}"#);
        assert!(matches!(o, Outcome::Failed(ref r) if r.starts_with("agent: garbage")));
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("ééé", 3), "é...");
    }
}
