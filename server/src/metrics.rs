//! Prometheus metrics (OpenMetrics text at `GET /metrics`): requests by endpoint and status,
//! tokens issued by grant, audited events, client authentication failures, the group-commit
//! queue depth and storage flush latency, storage failures and recoveries, password checks run
//! and turned away.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/oauth2/token`), never the raw path.
    pub endpoint: String,
    /// HTTP status.
    pub status: u16,
}

/// Labels of the issued-token counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabels {
    /// Grant type.
    pub grant: String,
}

/// Labels of the audit event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Event name.
    pub event: String,
    /// `success` or `failure`.
    pub outcome: String,
}

/// Every metric the server keeps. Clones share the same counters.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Requests by endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Access tokens issued, by grant.
    pub tokens_issued: Family<GrantLabels, Counter>,
    /// Audit entries appended, by event and outcome.
    pub audit_events: Family<EventLabels, Counter>,
    /// Failed client authentications.
    pub auth_failures: Counter,
    /// Requests waiting for the group commit.
    pub commit_queue_depth: Gauge<i64, AtomicI64>,
    /// Seconds per storage flush.
    pub flush_seconds: Histogram,
    /// Writes made durable per flush.
    pub flush_batch: Histogram,
    /// Password hashes checked (Argon2id runs at sign-in).
    pub password_checks: Counter,
    /// Sign-ins turned away because every password-check slot was busy.
    pub password_checks_busy: Counter,
    /// 1 while storage is failing (writes refused with 503), else 0.
    pub storage_failing: Gauge<i64, AtomicI64>,
    /// Times storage started failing.
    pub storage_failures: Counter,
    /// Times storage recovered from a failure.
    pub storage_recoveries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            tokens_issued: Family::default(),
            audit_events: Family::default(),
            auth_failures: Counter::default(),
            commit_queue_depth: Gauge::default(),
            // 50 µs .. ~1.6 s
            flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            flush_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            password_checks: Counter::default(),
            password_checks_busy: Counter::default(),
            storage_failing: Gauge::default(),
            storage_failures: Counter::default(),
            storage_recoveries: Counter::default(),
        }
    }
}

impl Metrics {
    /// A registry exposing these metrics under the `hallmark_` prefix.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("hallmark");
        r.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            self.requests.clone(),
        );
        r.register(
            "tokens_issued",
            "Access tokens issued, by grant type",
            self.tokens_issued.clone(),
        );
        r.register(
            "audit_events",
            "Audit log entries appended, by event and outcome",
            self.audit_events.clone(),
        );
        r.register(
            "client_auth_failures",
            "Failed client authentications",
            self.auth_failures.clone(),
        );
        r.register(
            "audit_queue_depth",
            "Requests waiting for their audit entries and state changes to be flushed",
            self.commit_queue_depth.clone(),
        );
        r.register(
            "storage_flush_seconds",
            "Duration of storage flushes (group commit)",
            self.flush_seconds.clone(),
        );
        r.register(
            "storage_flush_batch",
            "Requests made durable per storage flush",
            self.flush_batch.clone(),
        );
        r.register(
            "password_checks",
            "Passwords checked against their Argon2id hash at sign-in",
            self.password_checks.clone(),
        );
        r.register(
            "password_checks_busy",
            "Sign-ins refused with 503 because every password-check slot was busy",
            self.password_checks_busy.clone(),
        );
        r.register(
            "storage_failing",
            "1 while storage is failing and writes are refused with 503",
            self.storage_failing.clone(),
        );
        r.register(
            "storage_failures",
            "Times storage started failing (a flush failed)",
            self.storage_failures.clone(),
        );
        r.register(
            "storage_recoveries",
            "Times storage recovered from a failure without a restart",
            self.storage_recoveries.clone(),
        );
        r
    }

    /// Count an audited event (and what it says about tokens and authentication).
    pub fn observe_event(&self, event: &crate::store::audit::AuditEvent) {
        let outcome = match event.outcome {
            crate::store::audit::Outcome::Success => "success",
            crate::store::audit::Outcome::Failure => "failure",
        };
        self.audit_events
            .get_or_create(&EventLabels {
                event: event.event.clone(),
                outcome: outcome.into(),
            })
            .inc();
        if event.event == "client.auth_failed" {
            self.auth_failures.inc();
        }
        if event.event == "token.issued" || event.event == "token.exchanged" {
            // issued_event() and the token exchange write "grant=<type> ..." first.
            let grant = event
                .reason
                .as_deref()
                .and_then(|r| r.strip_prefix("grant="))
                .and_then(|r| r.split(' ').next())
                .unwrap_or("unknown");
            self.tokens_issued
                .get_or_create(&GrantLabels {
                    grant: grant.into(),
                })
                .inc();
        }
    }
}

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::{AuditEvent, Outcome};

    #[test]
    fn events_feed_token_and_failure_counters() {
        let m = Metrics::default();
        let registry = m.registry();
        m.observe_event(
            &AuditEvent::new("token.issued", Outcome::Success)
                .reason("grant=client_credentials scope=a jti=x"),
        );
        m.observe_event(&AuditEvent::new("client.auth_failed", Outcome::Failure));
        let text = render(&registry);
        assert!(
            text.contains(r#"hallmark_tokens_issued_total{grant="client_credentials"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("hallmark_client_auth_failures_total 1"),
            "{text}"
        );
        assert!(text.contains(
            r#"hallmark_audit_events_total{event="client.auth_failed",outcome="failure"} 1"#
        ));
    }
}
