//! Shared pieces of the fuzz targets (`mod fuzz` at the end of each decoder's module):
//! proptest over arbitrary bytes and over damaged valid encodings, which reach far deeper
//! into a decoder than random bytes do. The normal suite runs a few hundred cases per target;
//! `COMMITFS_FUZZ_CASES=N` runs N (e.g. `COMMITFS_FUZZ_CASES=1000000 cargo test --release
//! --features failpoints --lib fuzz::`).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// `default_cases` cases, or as many as `COMMITFS_FUZZ_CASES` says.
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("COMMITFS_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        // Failures are reported with their input; nothing is written into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// One way storage damages bytes.
#[derive(Clone, Debug)]
enum Damage {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrite 4 bytes with a value near a boundary (sizes and counts live in u32s).
    SetU32(Index, u32),
    Truncate(Index),
    Extend(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let boundary = prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(i32::MAX as u32),
        0u32..100_000,
        any::<u32>(),
    ];
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Damage::FlipBit(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Damage::SetByte(at, byte)),
        2 => (any::<Index>(), boundary).prop_map(|(at, value)| Damage::SetU32(at, value)),
        1 => any::<Index>().prop_map(Damage::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Extend),
    ]
}

fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
    match damage {
        Damage::Extend(more) => bytes.extend_from_slice(more),
        _ if bytes.is_empty() => {}
        Damage::FlipBit(at, bit) => {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Damage::SetByte(at, byte) => {
            let at = at.index(bytes.len());
            bytes[at] = *byte;
        }
        Damage::SetU32(at, value) => {
            let at = at.index(bytes.len());
            let end = (at + 4).min(bytes.len());
            bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
        }
        Damage::Truncate(at) => {
            let at = at.index(bytes.len());
            bytes.truncate(at);
        }
    }
}

/// A valid encoding with one to four kinds of damage applied.
pub fn damaged(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (valid, proptest::collection::vec(damage(), 1..5)).prop_map(|(mut bytes, damages)| {
        for damage in &damages {
            apply(&mut bytes, damage);
        }
        bytes
    })
}

/// Arbitrary bytes half the time, a damaged valid encoding the other half.
pub fn garbage_or_damaged(
    valid: impl Strategy<Value = Vec<u8>> + 'static,
    max_len: usize,
) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max_len),
        damaged(valid),
    ]
    .boxed()
}
