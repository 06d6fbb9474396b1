//! rota's fabric stub: the hosts, guest agents and instances behind the balancer.
//!
//! # Layout
//!
//! - [`web`]: the built-in web role, a small HTTP server that answers with its instance name.
#![forbid(unsafe_code)]

pub mod web;
