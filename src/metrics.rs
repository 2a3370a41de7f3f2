//! Prometheus metrics of the daemon, served at `/metrics` on `metrics_listen` (README
//! "Metrics"). The store and the FUSE layer count into process-wide counters as they work
//! (an append costs a map lookup by topic name and two atomic adds); a scrape encodes them
//! with `prometheus-client`, adding what is read from the store at that moment (disk use).
//! Without `metrics_listen` the counters still count, and nothing listens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::store::Store;

type OpLabel = [(&'static str, &'static str); 1];

/// Messages and bytes appended to one topic since the daemon started.
#[derive(Debug, Default)]
struct TopicCounts {
    messages: AtomicU64,
    bytes: AtomicU64,
}

struct Metrics {
    topics: RwLock<HashMap<String, Arc<TopicCounts>>>,
    /// Seconds each FUSE operation took in the daemon, by operation.
    requests: Family<OpLabel, Histogram, fn() -> Histogram>,
    reads: Counter,
    read_bytes: Counter,
    segments_materialized: Counter,
    /// How long the last open of a store took, recovery included.
    open_seconds: Gauge<f64, AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 10 µs to about 40 s, each bucket 4 times the last.
    Histogram::new(exponential_buckets(1e-5, 4.0, 12))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    topics: RwLock::new(HashMap::new()),
    requests: Family::new_with_constructor(latency_histogram),
    reads: Counter::default(),
    read_bytes: Counter::default(),
    segments_materialized: Counter::default(),
    open_seconds: Gauge::default(),
});

/// `messages` messages of `bytes` bytes in all were appended to `topic`.
pub fn appended(topic: &str, messages: u64, bytes: u64) {
    let metrics = &*METRICS;
    let counts = metrics.topics.read().get(topic).cloned();
    let counts = counts.unwrap_or_else(|| {
        let mut topics = metrics.topics.write();
        topics.entry(topic.to_owned()).or_default().clone()
    });
    counts.messages.fetch_add(messages, Ordering::Relaxed);
    counts.bytes.fetch_add(bytes, Ordering::Relaxed);
}

/// A FUSE request of operation `op` was answered after `elapsed`.
pub fn request_served(op: &'static str, elapsed: Duration) {
    METRICS
        .requests
        .get_or_create(&[("op", op)])
        .observe(elapsed.as_secs_f64());
}

/// A READ request was answered with `bytes` bytes.
pub fn read_served(bytes: usize) {
    METRICS.reads.inc();
    METRICS.read_bytes.inc_by(bytes as u64);
}

/// A sealed segment was copied to a file of its own.
pub fn segment_materialized() {
    METRICS.segments_materialized.inc();
}

/// A store was opened (and recovered, if it had to be) in `elapsed`.
pub fn store_opened(elapsed: Duration) {
    METRICS.open_seconds.set(elapsed.as_secs_f64());
}

/// Reads one of a topic's counts.
type CountOf = fn(&TopicCounts) -> u64;

/// The per-topic counters, encoded at each scrape.
#[derive(Debug)]
struct TopicCollector;

impl Collector for TopicCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topics: Vec<(String, Arc<TopicCounts>)> = METRICS
            .topics
            .read()
            .iter()
            .map(|(name, counts)| (name.clone(), counts.clone()))
            .collect();
        let families: [(&str, &str, CountOf); 2] = [
            (
                "appended_messages",
                "Messages appended, by topic, since the daemon started",
                |c| c.messages.load(Ordering::Relaxed),
            ),
            (
                "appended_bytes",
                "Bytes of messages appended, by topic, since the daemon started",
                |c| c.bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in families {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (topic, counts) in &topics {
                let labels = [("topic", topic.as_str())];
                ConstCounter::new(value(counts)).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// What is read from the store at each scrape.
struct StoreCollector(Arc<Store>);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreCollector")
            .field(&self.0.dir())
            .finish()
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metric = encoder.encode_descriptor(
            "disk_bytes",
            "Bytes the store occupies on disk: commit log, consume queues and key index",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.disk_usage() as i64).encode(metric)
    }
}

/// The text of one scrape, in the OpenMetrics text format.
fn render(store: &Arc<Store>) -> String {
    let metrics = &*METRICS;
    let mut registry = Registry::with_prefix("commitfs");
    registry.register_collector(Box::new(TopicCollector));
    registry.register_collector(Box::new(StoreCollector(store.clone())));
    registry.register(
        "reads",
        "READ requests the daemon answered with data",
        metrics.reads.clone(),
    );
    registry.register(
        "read_bytes",
        "Bytes the daemon returned to READ requests",
        metrics.read_bytes.clone(),
    );
    registry.register(
        "segments_materialized",
        "Sealed segments copied to files of their own since the daemon started",
        metrics.segments_materialized.clone(),
    );
    registry.register(
        "fuse_request_seconds",
        "Time the daemon took to answer a FUSE request, by operation",
        metrics.requests.clone(),
    );
    registry.register(
        "store_open_seconds",
        "How long opening the store took when the daemon started, recovery included",
        metrics.open_seconds.clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("encoding into a String cannot fail");
    text
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The listening socket, bound before the store opens so that a bad address refuses the
/// mount at once.
pub struct MetricsListener {
    server: Arc<tiny_http::Server>,
}

impl MetricsListener {
    pub fn bind(address: SocketAddr) -> std::io::Result<MetricsListener> {
        let server = tiny_http::Server::http(address).map_err(std::io::Error::other)?;
        Ok(MetricsListener {
            server: Arc::new(server),
        })
    }

    /// Answers scrapes from a thread of its own until the returned guard is dropped.
    pub fn serve(self, store: Arc<Store>) -> std::io::Result<MetricsServer> {
        if let Some(address) = self.server.server_addr().to_ip() {
            tracing::info!("serving Prometheus metrics at http://{address}/metrics");
        }
        let server = self.server.clone();
        let thread = std::thread::Builder::new()
            .name("commitfs-metrics".to_owned())
            .spawn(move || answer_scrapes(&server, &store))?;
        Ok(MetricsServer {
            server: self.server,
            thread: Some(thread),
        })
    }
}

fn answer_scrapes(server: &tiny_http::Server, store: &Arc<Store>) {
    // `recv` fails once the server is unblocked: time to stop.
    while let Ok(request) = server.recv() {
        let response = match (request.method(), request.url()) {
            (tiny_http::Method::Get, "/metrics") => {
                let header = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                    .expect("a valid header");
                tiny_http::Response::from_string(render(store)).with_header(header)
            }
            (tiny_http::Method::Get, _) => {
                tiny_http::Response::from_string("only /metrics is served here\n")
                    .with_status_code(404)
            }
            _ => tiny_http::Response::from_string("only GET is answered\n").with_status_code(405),
        };
        if let Err(error) = request.respond(response) {
            tracing::debug!("answering a metrics scrape: {error}");
        }
    }
}

/// The thread answering scrapes; dropping it stops the thread and closes the socket.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
