//! Routing a topic's messages: each to the partition its key picks, grouped by partition so
//! that one append of the store takes every partition's messages as a run of one vector.

use std::sync::Arc;

use super::{NewMessage, Partition, Topic};

/// `messages` routed among `table`, `topic`'s partition table (keyed messages by their key's
/// hash, keyless ones in turn), and grouped by partition.
pub(super) fn route<'t, 'm>(
    topic: &Topic,
    table: &'t [Arc<Partition>],
    messages: &[NewMessage<'m>],
) -> Routed<'t, 'm> {
    let routes: Vec<u32> = messages
        .iter()
        .map(|message| {
            let key = message.key_len.map(|len| &message.payload[..len]);
            topic.choose_partition_of(table.len() as u32, key)
        })
        .collect();
    let (ordered, runs) = by_partition(messages, &routes, table.len());
    Routed {
        table,
        ordered,
        runs,
    }
}

/// Messages in partition order (each partition's in their own order), and the runs of them
/// each partition takes.
pub(super) struct Routed<'t, 'm> {
    table: &'t [Arc<Partition>],
    ordered: Vec<NewMessage<'m>>,
    runs: Vec<(u32, usize)>,
}

impl<'t, 'm> Routed<'t, 'm> {
    /// (partition, its messages), in partition order, as one append takes them.
    pub fn batches(&self) -> Vec<(&'t Partition, &[NewMessage<'m>])> {
        let mut batches = Vec::with_capacity(self.runs.len());
        let mut rest = self.ordered.as_slice();
        for &(partition, len) in &self.runs {
            let (batch, after) = rest.split_at(len);
            batches.push((&*self.table[partition as usize], batch));
            rest = after;
        }
        batches
    }
}

/// `messages` grouped by the partition `routes` names for each (`routes[i]` for
/// `messages[i]`, each below `partitions`), each partition's in their own order, and the
/// runs, (partition, how many), in partition order. Counted out when the partitions are few
/// next to the messages (a `write()` to `append` brings thousands of lines, and sorting them
/// was 3-4 % of the FUSE threads' time into 10,000 partitions); sorted otherwise, so that a
/// few lines into a topic of very many partitions do not pass over every partition.
fn by_partition<'m>(
    messages: &[NewMessage<'m>],
    routes: &[u32],
    partitions: usize,
) -> (Vec<NewMessage<'m>>, Vec<(u32, usize)>) {
    let mut runs = Vec::new();
    if partitions <= 4 * messages.len() {
        // First starts[p + 1] counts partition p's messages; then starts[p] is where its
        // run starts, and moves along it as the run is filled.
        let mut starts = vec![0usize; partitions + 1];
        for &partition in routes {
            starts[partition as usize + 1] += 1;
        }
        for partition in 0..partitions {
            let len = starts[partition + 1];
            if len > 0 {
                runs.push((partition as u32, len));
            }
            starts[partition + 1] += starts[partition];
        }
        let mut order = vec![0u32; messages.len()];
        for (at, &partition) in (0u32..).zip(routes) {
            let next = &mut starts[partition as usize];
            order[*next] = at;
            *next += 1;
        }
        let ordered = order.iter().map(|&at| messages[at as usize]).collect();
        return (ordered, runs);
    }
    let mut order: Vec<(u32, u32)> = routes.iter().copied().zip(0u32..).collect();
    order.sort_unstable();
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        runs.push((run[0].0, run.len()));
    }
    let ordered = order.iter().map(|&(_, at)| messages[at as usize]).collect();
    (ordered, runs)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(crate::fuzzing::config(256))]

        /// Both ways of grouping (few partitions next to the messages, and many) give each
        /// partition's messages in their own order, partitions in order, and the runs that
        /// cut them apart: the same as a stable sort by partition.
        #[test]
        fn messages_are_grouped_by_partition_in_their_own_order(
            routes in prop::collection::vec(0u32..40, 0..200),
            partitions in 40usize..2000,
        ) {
            let payloads: Vec<Vec<u8>> =
                (0..routes.len()).map(|n| n.to_string().into_bytes()).collect();
            let messages: Vec<NewMessage<'_>> = payloads
                .iter()
                .map(|payload| NewMessage { payload, key_len: None })
                .collect();
            let (ordered, runs) = by_partition(&messages, &routes, partitions);

            let mut expected: Vec<(u32, usize)> = routes.iter().copied().zip(0..).collect();
            expected.sort_by_key(|&(partition, _)| partition);
            let expected_payloads: Vec<&[u8]> =
                expected.iter().map(|&(_, at)| payloads[at].as_slice()).collect();
            let payloads: Vec<&[u8]> = ordered.iter().map(|message| message.payload).collect();
            prop_assert_eq!(payloads, expected_payloads);
            let mut expected_runs: Vec<(u32, usize)> = Vec::new();
            for run in expected.chunk_by(|a, b| a.0 == b.0) {
                expected_runs.push((run[0].0, run.len()));
            }
            prop_assert_eq!(runs, expected_runs);
        }
    }
}
