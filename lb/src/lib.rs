//! rota's balancer: accept, pick, connect and copy for every input endpoint;
//! the rotation that decides who gets new connections; the admin API and metrics.
//!
//! It knows nothing of how a health verdict was reached or where instances
//! come from: probes and the fabric speak to it through [`RotationInput`].
//!
//! # Layout
//!
//! - [`balancer`]: binds endpoints, runs the data-plane worker threads, shuts down.
//! - [`endpoint`]: an endpoint's listening sockets, settings and accept loop.
//! - [`proxy`]: one client connection: pick, connect with retries, copy.
//! - [`copy`]: the bidirectional copy with half-close and idle timeout.
//! - `splice`: zero-copy forwarding through a pipe for bulk flows (Linux; the only `unsafe`).
//! - [`pool`]: the immutable pool snapshot and the pick for each distribution mode.
//! - [`maglev`]: the consistent-hash table behind the hash modes.
//! - [`rotation`]: the single writer of pool snapshots and its input type.
//! - [`metrics`]: Prometheus families and per-endpoint, per-instance handles.
//! - [`admin`]: `/metrics`, the JSON state API and drain/enable actions.
#![deny(unsafe_code)]

pub mod admin;
pub mod balancer;
pub mod copy;
pub mod endpoint;
pub mod maglev;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod rotation;
#[cfg(target_os = "linux")]
pub mod splice;

pub use balancer::{Balancer, StartError};
pub use endpoint::Endpoint;
pub use pool::{Flow, PoolSnapshot};
pub use rotation::{AdminAction, Probing, Rotation, RotationError, RotationInput};
