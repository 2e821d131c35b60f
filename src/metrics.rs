//! What the service counts, kept and exposed with `prometheus-client`
//! (the OpenMetrics text format, which Prometheus scrapes). The names are
//! an interface: dashboards and alerts use them, so they do not change
//! (the README lists them; counters get their `_total` from the library).

use std::time::Duration;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Latency bucket bounds, in seconds.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

fn latency_histogram() -> Histogram {
    Histogram::new(BOUNDS)
}

/// Everything the service counts. Shared by the chat logic and the wire layer.
pub struct Metrics {
    registry: Registry,
    /// Finished RPCs by method and gRPC code name.
    rpcs: Family<Labels2, Counter>,
    /// RPC latency by method (Connect: the whole stream).
    rpc_latency: Family<Labels1, Histogram, fn() -> Histogram>,
    pub streams_open: Gauge,
    pub messages_stored: Counter,
    pub idempotent_replays: Counter,
    /// Times a live stream was behind the in-memory window and read the store.
    pub lagging_reads: Counter,
    /// Store commits: a sled flush or a database transaction.
    pub flush_latency: Histogram,
    /// 1 while the store answers (readiness), else 0.
    pub store_up: Gauge,
    /// 1 while this replica listens for other replicas' messages, else 0
    /// (always 0 on the embedded store, which has no other replicas).
    pub bus_connected: Gauge,
    /// Wake-ups received from other replicas.
    pub bus_wakeups: Counter,
    /// Calls refused for want of a credential / for one that did not verify.
    pub auth_missing: Counter,
    pub auth_invalid: Counter,
    /// The memory budget (`--memory-budget-mb`) and how much of it is leased.
    pub budget_bytes: Gauge,
    pub budget_used: Gauge,
    /// Reads that had to wait for room in the budget, and those refused
    /// (`chat.Busy`) after waiting `--budget-wait`.
    pub budget_waits: Counter,
    pub budget_refusals: Counter,
    /// Client connections open, refused past --max-connections, and closed
    /// for want of a first request (handshake) or of any call (idle).
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub connections_timed_out_handshake: Counter,
    pub connections_timed_out_idle: Counter,
    /// Calls refused by `--rate-limit-send` / `--rate-limit-new`.
    pub rate_limited_send: Counter,
    pub rate_limited_new: Counter,
    pub rate_limited_read: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let rpcs = Family::<Labels2, Counter>::default();
        registry.register(
            "chat_rpcs",
            "Finished RPCs by method and gRPC code",
            rpcs.clone(),
        );
        let rpc_latency = Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "chat_rpc_duration_seconds",
            "RPC latency (Connect: the whole stream)",
            rpc_latency.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let streams_open = gauge(
            &mut registry,
            "chat_connect_streams_open",
            "Open Connect streams",
        );
        let messages_stored = counter(
            &mut registry,
            "chat_messages_stored",
            "Messages stored (durable)",
        );
        let idempotent_replays = counter(
            &mut registry,
            "chat_idempotent_replays",
            "Sends answered with an already stored message",
        );
        let lagging_reads = counter(
            &mut registry,
            "chat_lagging_reads",
            "Reads from the store by live streams behind the in-memory window",
        );
        let store_up = gauge(
            &mut registry,
            "chat_store_up",
            "1 while the store answers (readiness of chat.Chat)",
        );
        let bus_connected = gauge(
            &mut registry,
            "chat_bus_connected",
            "1 while listening for other replicas' messages (PostgreSQL LISTEN)",
        );
        let bus_wakeups = counter(
            &mut registry,
            "chat_bus_wakeups",
            "Wake-ups received from other replicas",
        );
        let auth_failures = Family::<Labels1, Counter>::default();
        registry.register(
            "chat_auth_failures",
            "Calls refused as unauthenticated, by reason",
            auth_failures.clone(),
        );
        let auth_missing = auth_failures
            .get_or_create(&[("reason", "missing")])
            .clone();
        let auth_invalid = auth_failures
            .get_or_create(&[("reason", "invalid")])
            .clone();
        let connections_open = gauge(
            &mut registry,
            "chat_connections_open",
            "Client connections open (WebSockets included)",
        );
        let connections_refused = counter(
            &mut registry,
            "chat_connections_refused",
            "Connections closed at once because --max-connections were open",
        );
        let timed_out = Family::<Labels1, Counter>::default();
        registry.register(
            "chat_connections_timed_out",
            "Connections closed by the server: no request within --handshake-timeout, \
             or no call for --idle-timeout",
            timed_out.clone(),
        );
        let connections_timed_out_handshake =
            timed_out.get_or_create(&[("reason", "handshake")]).clone();
        let connections_timed_out_idle = timed_out.get_or_create(&[("reason", "idle")]).clone();
        let budget_bytes = gauge(
            &mut registry,
            "chat_memory_budget_bytes",
            "The memory budget for what clients make the server hold (--memory-budget-mb)",
        );
        let budget_used = gauge(
            &mut registry,
            "chat_memory_budget_used_bytes",
            "Bytes of the budget held: stream batches, History pages being sent, recent windows",
        );
        let budget_waits = counter(
            &mut registry,
            "chat_memory_budget_waits",
            "Reads that waited for room in the memory budget",
        );
        let budget_refusals = counter(
            &mut registry,
            "chat_memory_budget_refusals",
            "Reads refused with chat.Busy after waiting --budget-wait for room",
        );
        let rate_limited = Family::<Labels1, Counter>::default();
        registry.register(
            "chat_rate_limited",
            "Calls refused with chat.RateLimited, by action (send: --rate-limit-send, new: --rate-limit-new)",
            rate_limited.clone(),
        );
        let rate_limited_send = rate_limited.get_or_create(&[("action", "send")]).clone();
        let rate_limited_new = rate_limited.get_or_create(&[("action", "new")]).clone();
        let rate_limited_read = rate_limited.get_or_create(&[("action", "read")]).clone();
        let flush_latency = latency_histogram();
        registry.register(
            "chat_flush_duration_seconds",
            "Store commits (one per group: a sled flush or a database transaction)",
            flush_latency.clone(),
        );
        Metrics {
            registry,
            rpcs,
            rpc_latency,
            streams_open,
            messages_stored,
            idempotent_replays,
            lagging_reads,
            flush_latency,
            store_up,
            bus_connected,
            bus_wakeups,
            auth_missing,
            auth_invalid,
            budget_bytes,
            budget_used,
            budget_waits,
            budget_refusals,
            connections_open,
            connections_refused,
            connections_timed_out_handshake,
            connections_timed_out_idle,
            rate_limited_send,
            rate_limited_new,
            rate_limited_read,
        }
    }
}

impl Metrics {
    /// Records one finished RPC.
    pub fn rpc(&self, method: &'static str, code: &'static str, latency: Duration) {
        self.rpc_latency
            .get_or_create(&[("method", method)])
            .observe(latency.as_secs_f64());
        self.rpcs
            .get_or_create(&[("method", method), ("code", code)])
            .inc();
    }

    /// Records one store commit.
    pub fn flushed(&self, latency: Duration) {
        self.flush_latency.observe(latency.as_secs_f64());
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
