//! The mirror's Prometheus metrics at `/metrics` on `[mirror] metrics_listen`: per source
//! partition, how many stored messages Kafka has not acknowledged yet (the lag) and how many
//! it has acknowledged since the mirror started.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// One source partition's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct PartitionFigures {
    /// Messages stored in the partition that Kafka has not acknowledged.
    pub lag: u64,
    /// Messages Kafka acknowledged since the mirror started.
    pub shipped: u64,
}

/// The figures of every mirrored partition, by (topic, partition).
#[derive(Debug, Default)]
pub struct Board {
    partitions: RwLock<BTreeMap<(String, u32), PartitionFigures>>,
}

impl Board {
    pub fn set(&self, topic: &str, partition: u32, figures: PartitionFigures) {
        self.partitions
            .write()
            .insert((topic.to_owned(), partition), figures);
    }

    /// The sum of every partition's lag.
    pub fn total_lag(&self) -> u64 {
        self.partitions.read().values().map(|f| f.lag).sum()
    }
}

#[derive(Debug)]
struct BoardCollector(Arc<Board>);

impl Collector for BoardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: Vec<((String, u32), PartitionFigures)> = self
            .0
            .partitions
            .read()
            .iter()
            .map(|(key, figures)| (key.clone(), *figures))
            .collect();
        let mut lag = encoder.encode_descriptor(
            "mirror_lag_messages",
            "Messages stored in the partition that Kafka has not acknowledged yet",
            None,
            MetricType::Gauge,
        )?;
        for ((topic, partition), figures) in &rows {
            let labels = [
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            ConstGauge::new(figures.lag as i64).encode(lag.encode_family(&labels)?)?;
        }
        let mut shipped = encoder.encode_descriptor(
            "mirror_shipped_messages",
            "Messages Kafka acknowledged since the mirror started",
            None,
            MetricType::Counter,
        )?;
        for ((topic, partition), figures) in &rows {
            let labels = [
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            ConstCounter::new(figures.shipped).encode(shipped.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers scrapes from a thread of its own while it lives.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn serve(address: SocketAddr, board: Arc<Board>) -> std::io::Result<MetricsServer> {
        let server = Arc::new(tiny_http::Server::http(address).map_err(std::io::Error::other)?);
        tracing::info!("serving the mirror's Prometheus metrics at http://{address}/metrics");
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("mirror-metrics".to_owned())
            .spawn(move || answer_scrapes(&serving, &board))?;
        Ok(MetricsServer {
            server,
            thread: Some(thread),
        })
    }
}

fn answer_scrapes(server: &tiny_http::Server, board: &Arc<Board>) {
    while let Ok(request) = server.recv() {
        let response = if request.url() == "/metrics" {
            let mut registry = Registry::with_prefix("commitfs");
            registry.register_collector(Box::new(BoardCollector(board.clone())));
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry)
                .expect("encoding into a String cannot fail");
            let header = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                .expect("a valid header");
            tiny_http::Response::from_string(text).with_header(header)
        } else {
            tiny_http::Response::from_string("only /metrics is served here\n").with_status_code(404)
        };
        if let Err(error) = request.respond(response) {
            tracing::debug!("answering a metrics scrape: {error}");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
