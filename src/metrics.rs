//! Counters and histograms, rendered as Prometheus text. Lock-free atomics
//! on the hot paths; no metrics crate needed for this handful.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::Duration,
};

/// Latency bucket bounds, in seconds.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The RPC methods, in the order of [`Metrics::rpc_latency`].
pub const METHODS: [&str; 4] = ["New", "Send", "History", "Connect"];

/// A latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Everything the service counts. Shared by the chat logic and the wire layer.
#[derive(Default)]
pub struct Metrics {
    /// Finished RPCs by (method, gRPC code name).
    rpcs: Mutex<Vec<((&'static str, &'static str), u64)>>,
    /// Per method, in [`METHODS`] order.
    rpc_latency: [Histogram; 4],
    pub streams_open: AtomicI64,
    pub messages_stored: AtomicU64,
    pub idempotent_replays: AtomicU64,
    /// Times a live stream was behind the in-memory window and read the store.
    pub lagging_reads: AtomicU64,
    pub flush_latency: Histogram,
    /// 1 while the store answers (readiness), else 0.
    pub store_up: AtomicI64,
    /// 1 while this replica listens for other replicas' messages, else 0
    /// (always 0 on the embedded store, which has no other replicas).
    pub bus_connected: AtomicI64,
    /// Wake-ups received from other replicas.
    pub bus_wakeups: AtomicU64,
    /// Calls refused for want of a credential / for one that did not verify.
    pub auth_missing: AtomicU64,
    pub auth_invalid: AtomicU64,
    /// The memory budget (`--memory-budget-mb`) and how much of it is leased.
    pub budget_bytes: AtomicI64,
    pub budget_used: AtomicI64,
    /// Reads that had to wait for room in the budget, and those refused
    /// (`chat.Busy`) after waiting `--budget-wait`.
    pub budget_waits: AtomicU64,
    pub budget_refusals: AtomicU64,
    /// Client connections open, refused past --max-connections, and closed
    /// for want of a first request (handshake) or of any call (idle).
    pub connections_open: AtomicI64,
    pub connections_refused: AtomicU64,
    pub connections_timed_out_handshake: AtomicU64,
    pub connections_timed_out_idle: AtomicU64,
}

impl Metrics {
    /// Records one finished RPC.
    pub fn rpc(&self, method: &'static str, code: &'static str, latency: Duration) {
        if let Some(i) = METHODS.iter().position(|m| *m == method) {
            self.rpc_latency[i].observe(latency);
        }
        let mut rpcs = self.rpcs.lock().unwrap_or_else(|e| e.into_inner());
        match rpcs.iter_mut().find(|(k, _)| *k == (method, code)) {
            Some((_, n)) => *n += 1,
            None => rpcs.push(((method, code), 1)),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP chat_rpcs_total Finished RPCs by method and gRPC code.\n# TYPE chat_rpcs_total counter\n");
        for ((method, code), n) in self.rpcs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "chat_rpcs_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP chat_rpc_duration_seconds RPC latency (Connect: the whole stream).\n# TYPE chat_rpc_duration_seconds histogram\n");
        for (method, h) in METHODS.iter().zip(&self.rpc_latency) {
            h.render(
                &mut out,
                "chat_rpc_duration_seconds",
                &format!("method=\"{method}\""),
            );
        }
        let gauges: [(&str, &str, &str, i64); 13] = [
            (
                "chat_connect_streams_open",
                "gauge",
                "Open Connect streams.",
                self.streams_open.load(Relaxed),
            ),
            (
                "chat_messages_stored_total",
                "counter",
                "Messages stored (durable).",
                self.messages_stored.load(Relaxed) as i64,
            ),
            (
                "chat_idempotent_replays_total",
                "counter",
                "Sends answered with an already stored message.",
                self.idempotent_replays.load(Relaxed) as i64,
            ),
            (
                "chat_lagging_reads_total",
                "counter",
                "Reads from the store by live streams behind the in-memory window.",
                self.lagging_reads.load(Relaxed) as i64,
            ),
            (
                "chat_store_up",
                "gauge",
                "1 while the store answers (readiness of chat.Chat).",
                self.store_up.load(Relaxed),
            ),
            (
                "chat_bus_connected",
                "gauge",
                "1 while listening for other replicas' messages (PostgreSQL LISTEN).",
                self.bus_connected.load(Relaxed),
            ),
            (
                "chat_bus_wakeups_total",
                "counter",
                "Wake-ups received from other replicas.",
                self.bus_wakeups.load(Relaxed) as i64,
            ),
            (
                "chat_connections_open",
                "gauge",
                "Client connections open (WebSockets included).",
                self.connections_open.load(Relaxed),
            ),
            (
                "chat_connections_refused_total",
                "counter",
                "Connections closed at once because --max-connections were open.",
                self.connections_refused.load(Relaxed) as i64,
            ),
            (
                "chat_memory_budget_bytes",
                "gauge",
                "The memory budget for what clients make the server hold (--memory-budget-mb).",
                self.budget_bytes.load(Relaxed),
            ),
            (
                "chat_memory_budget_used_bytes",
                "gauge",
                "Bytes of the budget held: stream batches, History pages being sent, recent windows.",
                self.budget_used.load(Relaxed),
            ),
            (
                "chat_memory_budget_waits_total",
                "counter",
                "Reads that waited for room in the memory budget.",
                self.budget_waits.load(Relaxed) as i64,
            ),
            (
                "chat_memory_budget_refusals_total",
                "counter",
                "Reads refused with chat.Busy after waiting --budget-wait for room.",
                self.budget_refusals.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP chat_auth_failures_total Calls refused as unauthenticated, by reason.\n\
             # TYPE chat_auth_failures_total counter\n\
             chat_auth_failures_total{{reason=\"missing\"}} {}\n\
             chat_auth_failures_total{{reason=\"invalid\"}} {}",
            self.auth_missing.load(Relaxed),
            self.auth_invalid.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP chat_connections_timed_out_total Connections closed by the server: no request within --handshake-timeout, or no call for --idle-timeout.\n\
             # TYPE chat_connections_timed_out_total counter\n\
             chat_connections_timed_out_total{{reason=\"handshake\"}} {}\n\
             chat_connections_timed_out_total{{reason=\"idle\"}} {}",
            self.connections_timed_out_handshake.load(Relaxed),
            self.connections_timed_out_idle.load(Relaxed)
        );
        out.push_str("# HELP chat_flush_duration_seconds Store commits (one per group: a sled flush or a database transaction).\n# TYPE chat_flush_duration_seconds histogram\n");
        self.flush_latency
            .render(&mut out, "chat_flush_duration_seconds", "");
        out
    }
}
