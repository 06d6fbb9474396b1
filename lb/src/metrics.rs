//! Prometheus metrics: families registered once, labelled handles resolved when an endpoint or instance joins.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Why a new connection was refused; the `reason` label of `rota_endpoint_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Several instances exist and none is in rotation (SPEC rotation rule 5).
    NoInstanceInRotation,
    /// Every connect attempt failed or timed out.
    ConnectFailed,
}

impl RefuseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::NoInstanceInRotation => "no_instance_in_rotation",
            RefuseReason::ConnectFailed => "connect_failed",
        }
    }
}

/// Every metric family the balancer exports.
#[derive(Clone)]
pub struct Metrics {
    accepted: IntCounterVec,
    active: IntGaugeVec,
    refused: IntCounterVec,
    in_rotation: IntGaugeVec,
    member_active: IntGaugeVec,
    member_total: IntCounterVec,
    sent: IntCounterVec,
    received: IntCounterVec,
    connect_failures: IntCounterVec,
    connect_seconds: HistogramVec,
    transitions: IntCounterVec,
}

/// Handles for one endpoint, resolved once.
#[derive(Clone)]
pub struct EndpointMetrics {
    pub accepted: IntCounter,
    pub active: IntGauge,
    pub refused_no_instance: IntCounter,
    pub refused_connect_failed: IntCounter,
}

impl EndpointMetrics {
    pub fn refused(&self, reason: RefuseReason) -> &IntCounter {
        match reason {
            RefuseReason::NoInstanceInRotation => &self.refused_no_instance,
            RefuseReason::ConnectFailed => &self.refused_connect_failed,
        }
    }
}

/// Handles for one instance of one endpoint, resolved when it joins the pool.
#[derive(Clone)]
pub struct MemberMetrics {
    pub in_rotation: IntGauge,
    /// Live connections; also the count the admin API and least-connections read.
    pub active: IntGauge,
    pub connections: IntCounter,
    pub sent_bytes: IntCounter,
    pub received_bytes: IntCounter,
    pub connect_failures: IntCounter,
    pub connect_seconds: Histogram,
    pub transitions_in: IntCounter,
    pub transitions_out: IntCounter,
}

impl Metrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let ep = &["endpoint"];
        let inst = &["endpoint", "instance"];
        let m = Metrics {
            accepted: IntCounterVec::new(
                Opts::new(
                    "rota_endpoint_connections_accepted_total",
                    "Client connections accepted.",
                ),
                ep,
            )?,
            active: IntGaugeVec::new(
                Opts::new(
                    "rota_endpoint_connections_active",
                    "Client connections open now.",
                ),
                ep,
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "rota_endpoint_connections_refused_total",
                    "Client connections closed without reaching an instance, by reason.",
                ),
                &["endpoint", "reason"],
            )?,
            in_rotation: IntGaugeVec::new(
                Opts::new(
                    "rota_instance_in_rotation",
                    "1 when the instance receives new connections.",
                ),
                inst,
            )?,
            member_active: IntGaugeVec::new(
                Opts::new(
                    "rota_instance_connections_active",
                    "Connections open to the instance now.",
                ),
                inst,
            )?,
            member_total: IntCounterVec::new(
                Opts::new(
                    "rota_instance_connections_total",
                    "Connections made to the instance.",
                ),
                inst,
            )?,
            sent: IntCounterVec::new(
                Opts::new(
                    "rota_instance_sent_bytes_total",
                    "Bytes forwarded from clients to the instance.",
                ),
                inst,
            )?,
            received: IntCounterVec::new(
                Opts::new(
                    "rota_instance_received_bytes_total",
                    "Bytes forwarded from the instance to clients.",
                ),
                inst,
            )?,
            connect_failures: IntCounterVec::new(
                Opts::new(
                    "rota_instance_connect_failures_total",
                    "Connect attempts to the instance that failed or timed out.",
                ),
                inst,
            )?,
            connect_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "rota_instance_connect_duration_seconds",
                    "Time to establish a connection to the instance.",
                )
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                inst,
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "rota_instance_rotation_transitions_total",
                    "Times the instance entered (to=in) or left (to=out) rotation.",
                ),
                &["endpoint", "instance", "to"],
            )?,
        };
        registry.register(Box::new(m.accepted.clone()))?;
        registry.register(Box::new(m.active.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.in_rotation.clone()))?;
        registry.register(Box::new(m.member_active.clone()))?;
        registry.register(Box::new(m.member_total.clone()))?;
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.connect_failures.clone()))?;
        registry.register(Box::new(m.connect_seconds.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        Ok(m)
    }

    pub fn endpoint(&self, endpoint: &str) -> EndpointMetrics {
        EndpointMetrics {
            accepted: self.accepted.with_label_values(&[endpoint]),
            active: self.active.with_label_values(&[endpoint]),
            refused_no_instance: self
                .refused
                .with_label_values(&[endpoint, RefuseReason::NoInstanceInRotation.as_str()]),
            refused_connect_failed: self
                .refused
                .with_label_values(&[endpoint, RefuseReason::ConnectFailed.as_str()]),
        }
    }

    pub fn member(&self, endpoint: &str, instance: &str) -> MemberMetrics {
        let l = &[endpoint, instance];
        MemberMetrics {
            in_rotation: self.in_rotation.with_label_values(l),
            active: self.member_active.with_label_values(l),
            connections: self.member_total.with_label_values(l),
            sent_bytes: self.sent.with_label_values(l),
            received_bytes: self.received.with_label_values(l),
            connect_failures: self.connect_failures.with_label_values(l),
            connect_seconds: self.connect_seconds.with_label_values(l),
            transitions_in: self
                .transitions
                .with_label_values(&[endpoint, instance, "in"]),
            transitions_out: self
                .transitions
                .with_label_values(&[endpoint, instance, "out"]),
        }
    }

    /// Drops an instance's series once it has left the pool and closed its last connection.
    pub fn forget_member(&self, endpoint: &str, instance: &str) {
        let l = &[endpoint, instance];
        let _ = self.in_rotation.remove_label_values(l);
        let _ = self.member_active.remove_label_values(l);
        let _ = self.member_total.remove_label_values(l);
        let _ = self.sent.remove_label_values(l);
        let _ = self.received.remove_label_values(l);
        let _ = self.connect_failures.remove_label_values(l);
        let _ = self.connect_seconds.remove_label_values(l);
        let _ = self
            .transitions
            .remove_label_values(&[endpoint, instance, "in"]);
        let _ = self
            .transitions
            .remove_label_values(&[endpoint, instance, "out"]);
    }
}
