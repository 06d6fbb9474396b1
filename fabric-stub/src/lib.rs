//! rota's fabric stub: provisions, supervises, recycles and upgrades real instance processes.
//!
//! The model (SPEC "Guest agent and fabric rules"): a service is a set of
//! **roles**; each role runs N **instances**; every instance is one guest-agent
//! process (`rota agent`, in its own process group so it outlives the fabric)
//! that starts and supervises the role's own process on a port the fabric
//! chose. **Hosts** are simulated inside the fabric and grouped in **fault
//! domains**; instances sit in **update domains** (instance *i* in UD *i mod n*).
//!
//! Decisions:
//! - Everything runs on 127.0.0.1. A role command's `{port}`, `{instance}`,
//!   `{role}`, `{disk}` and `{base}` are filled in per instance, and a program
//!   spelled `rota` is the running binary. `target_port` does not apply to roles.
//! - Disks: `<state>/base/<role>` (or `base_image`) is the read-only base image
//!   by convention; `<state>/disks/<instance>.<generation>` is the differencing
//!   disk. Reboot, crash restarts and updates keep it; reimage and move make a new one.
//! - Heartbeats: the fabric asks every agent for its status each
//!   `heartbeat_interval`; `heartbeat_misses` misses in a row (or a dead agent
//!   process) reboot the instance; a third such reboot without the instance
//!   getting Ready moves it to another host. An instance whose host failed moves.
//! - Crash loop: 5 role exits within 60 s end in `Failed` (never Ready); the
//!   fabric leaves it so (an operator reboots or reimages it).
//! - Removal (scale-in, update, reboot, host update) marks instances
//!   `Stopping` (the balancer drains them), waits `drain_delay`, then asks the
//!   agent to stop the role with SIGTERM and kills it after `shutdown_grace`.
//! - One operation at a time (409 otherwise); "continue" is always accepted.
//! - State is written atomically to `<state>/state.json` and the topology to
//!   `<state>/topology.json` on every change; a fabric started on the same
//!   folder re-adopts instances whose agent (same pid and start time) answers.
//!
//! # Layout
//!
//! - [`fabric`]: the controller: state, placement, processes, heartbeats, operations.
//! - [`topology`]: what is published (versions, Changing/Changed), and following a topology file.
//! - [`placement`]: update/fault domain and host placement rules (pure).
//! - [`walk`]: the update-domain walk for rolling and host updates (pure, async).
//! - [`lifecycle`]: the guest agent's state machine for its role process (pure).
//! - [`agent`]: the guest-agent process: supervision and its HTTP endpoint.
//! - [`api`]: the `/api/v1/fabric` admin routes and a standalone server.
//! - [`cli`]: `rota fabric ...`.
//! - [`web`]: the built-in web role, a small HTTP server that answers with its instance name.
//! - [`os`]: `/proc` and `kill` helpers, atomic writes, time formatting.
//! - [`http`]: a one-request HTTP client and the servers' accept loop, over hyper.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod fabric;
pub mod http;
pub mod lifecycle;
pub mod os;
pub mod placement;
pub mod topology;
pub mod walk;
pub mod web;

pub use fabric::{
    Fabric, FabricError, FabricSettings, Operation, Report, RoleSpec, StartRecord, Ticket,
};
pub use topology::{InstanceInfo, StartReason, Topology, TopologyEvent};
