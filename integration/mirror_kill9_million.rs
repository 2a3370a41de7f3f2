//! The exactly-once goal of issue 11 as a test: 1,000,000 messages appended in rounds to a
//! 2-partition topic while `commitfs mirror` is killed with SIGKILL six times at random
//! moments mid-stream; then every message is read back from Kafka and counted: none lost,
//! none twice. Against Tansu, like `mirror_tests.rs` (`COMMITFS_SKIP_KAFKA_TESTS=1` skips).

mod broker;
mod common;

use broker::Broker;
use common::{Config, Mount};

#[test]
fn a_million_messages_across_six_kill_9_of_the_mirror_land_once_each() {
    if !broker::kafka_available() {
        return;
    }
    let broker = Broker::start();
    let config = Config::small()
        .set("partitions", "2")
        .set("segment_messages", "300000")
        .set("commit_log_file_bytes", "268435456")
        .set("index_entries", "4000000");
    let m = Mount::new(broker::mirror_config(config, &broker));
    let outcome = broker::kill9_run(&broker, &m, 1_000_000, 6);
    assert_eq!(outcome.restarts, 6, "{outcome:?}");
    assert_eq!((outcome.lost, outcome.duplicated), (0, 0), "{outcome:?}");
}
