//! commitfs: Kafka-style topics, partitions and segment files through FUSE, stored
//! RocketMQ-style in one memory-mapped commit log.

pub mod config;
pub mod fs;
pub mod metrics;
pub mod mirror;
mod stop_signals;
pub mod store;

#[cfg(test)]
mod fuzzing;
