//! Extended-attribute names and values: which names each kind of node has, how the
//! settable ones parse, and the getxattr/listxattr size-probe protocol.

use crate::store::Framing;

use super::error::{FsError, FsResult};

/// The largest value the kernel passes through (XATTR_SIZE_MAX).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The kinds of node that carry extended attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrHolder {
    Root,
    Topic,
    Partition,
    Segment,
    Stream,
    /// `append` and `active`: no attributes.
    Plain,
}

/// A topic setting, read and written as `user.<name>` on the topic directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Partitions,
    Framing,
    KeySeparator,
    RetentionMs,
    RetentionBytes,
}

/// One of a segment file's facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentFact {
    BaseOffset,
    EndOffset,
    Messages,
    FirstTimestamp,
    LastTimestamp,
    Sealed,
}

/// A parsed attribute name. Per-key names keep the key's raw bytes; `Offset` and `Time`
/// keep their argument unparsed, so a malformed one is `EINVAL` rather than unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrName<'a> {
    ReadRequests,
    Setting(Setting),
    Key(&'a [u8]),
    Offsets(&'a [u8]),
    StartOffset,
    EndOffset,
    Offset(&'a [u8]),
    Time(&'a [u8]),
    Segment(SegmentFact),
    StartPosition,
    /// `user.consumer.<GROUP>`: the group's position(s), its name unchecked.
    Consumer(&'a [u8]),
}

const READ_REQUESTS: &str = "user.stats.read_requests";
const SETTINGS: [(&str, Setting); 5] = [
    ("user.partitions", Setting::Partitions),
    ("user.framing", Setting::Framing),
    ("user.key_separator", Setting::KeySeparator),
    ("user.retention_ms", Setting::RetentionMs),
    ("user.retention_bytes", Setting::RetentionBytes),
];
const SEGMENT_FACTS: [(&str, SegmentFact); 6] = [
    ("user.base_offset", SegmentFact::BaseOffset),
    ("user.end_offset", SegmentFact::EndOffset),
    ("user.messages", SegmentFact::Messages),
    ("user.first_timestamp", SegmentFact::FirstTimestamp),
    ("user.last_timestamp", SegmentFact::LastTimestamp),
    ("user.sealed", SegmentFact::Sealed),
];
const START_OFFSET: &str = "user.start_offset";
const START_POSITION: &str = "user.start_position";
const END_OFFSET: &str = "user.end_offset";
const KEY_PREFIX: &[u8] = b"user.key.";
const OFFSETS_PREFIX: &[u8] = b"user.offsets.";
const OFFSET_PREFIX: &[u8] = b"user.offset.";
const TIME_PREFIX: &[u8] = b"user.time.";
const CONSUMER_PREFIX: &[u8] = b"user.consumer.";

fn lookup<T: Copy>(table: &[(&str, T)], name: &[u8]) -> Option<T> {
    table
        .iter()
        .find(|(known, _)| known.as_bytes() == name)
        .map(|&(_, value)| value)
}

impl<'a> XattrName<'a> {
    /// The attribute `name` names on a node of kind `holder`, if any.
    pub fn parse(holder: XattrHolder, name: &'a [u8]) -> Option<XattrName<'a>> {
        // Names both directories have: lookups by key and consumer positions.
        let per_key = || {
            if let Some(key) = name.strip_prefix(KEY_PREFIX) {
                Some(XattrName::Key(key))
            } else if let Some(group) = name.strip_prefix(CONSUMER_PREFIX) {
                Some(XattrName::Consumer(group))
            } else {
                name.strip_prefix(OFFSETS_PREFIX).map(XattrName::Offsets)
            }
        };
        match holder {
            XattrHolder::Root => {
                (name == READ_REQUESTS.as_bytes()).then_some(XattrName::ReadRequests)
            }
            XattrHolder::Topic => lookup(&SETTINGS, name)
                .map(XattrName::Setting)
                .or_else(per_key),
            XattrHolder::Partition => {
                if name == START_OFFSET.as_bytes() {
                    Some(XattrName::StartOffset)
                } else if name == END_OFFSET.as_bytes() {
                    Some(XattrName::EndOffset)
                } else if let Some(offset) = name.strip_prefix(OFFSET_PREFIX) {
                    Some(XattrName::Offset(offset))
                } else if let Some(time) = name.strip_prefix(TIME_PREFIX) {
                    Some(XattrName::Time(time))
                } else {
                    per_key()
                }
            }
            XattrHolder::Segment => lookup(&SEGMENT_FACTS, name).map(XattrName::Segment),
            XattrHolder::Stream => {
                (name == START_POSITION.as_bytes()).then_some(XattrName::StartPosition)
            }
            XattrHolder::Plain => None,
        }
    }
}

/// `user.consumer.<group>`, as listxattr reports a group that has a position.
pub fn consumer_name(group: &str) -> String {
    format!("user.consumer.{group}")
}

/// The group a `user.consumer.` name gives: `[A-Za-z0-9._-]`, 1–200 characters.
pub fn parse_group(group: &[u8]) -> FsResult<&str> {
    std::str::from_utf8(group)
        .ok()
        .filter(|group| crate::store::consumers::validate_group(group).is_ok())
        .ok_or_else(|| {
            FsError::refused(
                libc::EINVAL,
                "a consumer group is 1-200 characters of [A-Za-z0-9._-]",
            )
        })
}

/// A consumer position as set: the next offset the group will read.
pub fn parse_position(value: &[u8]) -> FsResult<u64> {
    let value = text(value)?;
    value
        .parse::<u64>()
        .map_err(|_| invalid(value, "an offset (the next one the group will read)"))
}

/// The fixed names of a node kind, as listxattr reports them (per-key names are not listed).
pub fn fixed_names(holder: XattrHolder) -> Vec<&'static str> {
    match holder {
        XattrHolder::Root => vec![READ_REQUESTS],
        XattrHolder::Topic => SETTINGS.iter().map(|(name, _)| *name).collect(),
        XattrHolder::Partition => vec![START_OFFSET, END_OFFSET],
        XattrHolder::Segment => SEGMENT_FACTS.iter().map(|(name, _)| *name).collect(),
        XattrHolder::Stream => vec![START_POSITION],
        XattrHolder::Plain => Vec::new(),
    }
}

/// The listxattr value: names, each ended by a NUL.
pub fn name_list<'n>(names: impl IntoIterator<Item = &'n str>) -> Vec<u8> {
    let mut list = Vec::new();
    for name in names {
        list.extend_from_slice(name.as_bytes());
        list.push(0);
    }
    list
}

/// What getxattr and listxattr answer under the size-probe protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The caller asked for the length (buffer size 0).
    Length(u32),
    Value(Vec<u8>),
}

/// Buffer size 0 asks for the length; a buffer too small gets `ERANGE`, never a cut value.
pub fn fit(value: Vec<u8>, buffer_size: u32) -> FsResult<XattrReply> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(FsError::refused(
            libc::E2BIG,
            format!(
                "the value is {} bytes, over the 64 KiB an extended attribute can carry",
                value.len()
            ),
        ));
    }
    let length = value.len() as u32;
    if buffer_size == 0 {
        Ok(XattrReply::Length(length))
    } else if length > buffer_size {
        Err(FsError::missing(
            libc::ERANGE,
            format!("the value is {length} bytes; the buffer holds {buffer_size}"),
        ))
    } else {
        Ok(XattrReply::Value(value))
    }
}

fn text(value: &[u8]) -> FsResult<&str> {
    std::str::from_utf8(value)
        .map(str::trim)
        .map_err(|_| FsError::refused(libc::EINVAL, "the value is not text"))
}

fn invalid(value: &str, expected: &str) -> FsError {
    FsError::refused(libc::EINVAL, format!("{value:?} is not {expected}"))
}

/// `partitions`: a positive count (that it only grows is the store's rule).
pub fn parse_partitions(value: &[u8]) -> FsResult<u32> {
    let value = text(value)?;
    value
        .parse::<u32>()
        .ok()
        .filter(|&count| count > 0)
        .ok_or_else(|| invalid(value, "a positive number of partitions"))
}

pub fn parse_framing(value: &[u8]) -> FsResult<Framing> {
    let value = text(value)?;
    value
        .parse()
        .map_err(|_| invalid(value, "\"lines\" or \"raw\""))
}

/// `key_separator`: taken byte for byte (it may well be a space or a tab); empty means no
/// keys. It may not hold a newline, which ends every `lines` message.
pub fn parse_key_separator(value: &[u8]) -> FsResult<Option<Vec<u8>>> {
    if value.contains(&b'\n') {
        return Err(FsError::refused(
            libc::EINVAL,
            "a key separator may not contain a newline",
        ));
    }
    Ok((!value.is_empty()).then(|| value.to_vec()))
}

/// `retention_ms` / `retention_bytes`: a limit, or -1 for none (as in Kafka).
pub fn parse_retention(value: &[u8]) -> FsResult<Option<u64>> {
    let value = text(value)?;
    if value == "-1" {
        return Ok(None);
    }
    value
        .parse::<u64>()
        .map(Some)
        .map_err(|_| invalid(value, "a non-negative number or -1 (no limit)"))
}

pub fn format_retention(limit: Option<u64>) -> Vec<u8> {
    limit.map_or_else(|| b"-1".to_vec(), |value| value.to_string().into_bytes())
}

/// `user.offset.<N>`: a message offset.
pub fn parse_offset(argument: &[u8]) -> FsResult<u64> {
    std::str::from_utf8(argument)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| FsError::refused(libc::EINVAL, "not a message offset"))
}

/// `user.time.<T>`: milliseconds since the epoch or RFC 3339.
pub fn parse_time(argument: &[u8]) -> FsResult<i64> {
    std::str::from_utf8(argument)
        .ok()
        .and_then(super::time::parse_timestamp_ms)
        .ok_or_else(|| {
            FsError::refused(
                libc::EINVAL,
                "neither milliseconds since the epoch nor an RFC 3339 time",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_holder_has_its_own_names() {
        use XattrHolder::*;
        let expected = [
            (
                Root,
                &b"user.stats.read_requests"[..],
                XattrName::ReadRequests,
            ),
            (
                Topic,
                b"user.partitions",
                XattrName::Setting(Setting::Partitions),
            ),
            (
                Topic,
                b"user.key_separator",
                XattrName::Setting(Setting::KeySeparator),
            ),
            (Topic, b"user.key.user:42", XattrName::Key(b"user:42")),
            (Partition, b"user.key.", XattrName::Key(b"")),
            (Partition, b"user.offsets.k", XattrName::Offsets(b"k")),
            (Partition, b"user.offset.17", XattrName::Offset(b"17")),
            (Partition, b"user.time.0", XattrName::Time(b"0")),
            (Partition, b"user.start_offset", XattrName::StartOffset),
            (Partition, b"user.consumer.g-1", XattrName::Consumer(b"g-1")),
            (Topic, b"user.consumer.g", XattrName::Consumer(b"g")),
            (
                Segment,
                b"user.end_offset",
                XattrName::Segment(SegmentFact::EndOffset),
            ),
            (
                Segment,
                b"user.sealed",
                XattrName::Segment(SegmentFact::Sealed),
            ),
        ];
        for (holder, name, parsed) in expected {
            assert_eq!(
                XattrName::parse(holder, name),
                Some(parsed),
                "{holder:?} {}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn names_outside_a_holder_are_unknown() {
        use XattrHolder::*;
        for (holder, name) in [
            (Root, &b"user.partitions"[..]),
            (Topic, b"user.start_offset"),
            (Topic, b"user.offset.1"),
            (Partition, b"user.partitions"),
            (Segment, b"user.key.a"),
            (Plain, b"user.sealed"),
            (Topic, b"security.capability"),
            (Topic, b"user.keys.a"),
            (Partition, b"user.time"),
            (Segment, b"user.consumer.g"),
            (Stream, b"user.consumer.g"),
        ] {
            assert_eq!(
                XattrName::parse(holder, name),
                None,
                "{holder:?} {}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn every_listed_name_parses_on_its_holder() {
        use XattrHolder::*;
        for holder in [Root, Topic, Partition, Segment, Stream, Plain] {
            for name in fixed_names(holder) {
                assert!(
                    XattrName::parse(holder, name.as_bytes()).is_some(),
                    "{holder:?} {name}"
                );
            }
        }
        assert_eq!(name_list(["user.a", "user.bc"]), b"user.a\0user.bc\0");
    }

    #[test]
    fn the_size_probe_protocol() {
        assert_eq!(fit(b"12345".to_vec(), 0).unwrap(), XattrReply::Length(5));
        assert_eq!(
            fit(b"12345".to_vec(), 5).unwrap(),
            XattrReply::Value(b"12345".to_vec())
        );
        assert_eq!(
            fit(b"12345".to_vec(), 100).unwrap(),
            XattrReply::Value(b"12345".to_vec())
        );
        assert_eq!(fit(b"12345".to_vec(), 4).unwrap_err().errno(), libc::ERANGE);
        assert_eq!(
            fit(vec![0; MAX_VALUE_BYTES], 0).unwrap(),
            XattrReply::Length(MAX_VALUE_BYTES as u32)
        );
        assert_eq!(
            fit(vec![0; MAX_VALUE_BYTES + 1], 0).unwrap_err().errno(),
            libc::E2BIG
        );
    }

    #[test]
    fn settings_parse_or_are_invalid() {
        assert_eq!(parse_partitions(b"4").unwrap(), 4);
        assert_eq!(parse_partitions(b" 12\n").unwrap(), 12);
        for bad in [&b"0"[..], b"-1", b"four", b"", b"\xff"] {
            assert_eq!(parse_partitions(bad).unwrap_err().errno(), libc::EINVAL);
        }
        assert_eq!(parse_framing(b"raw").unwrap(), Framing::Raw);
        assert_eq!(parse_framing(b"lines").unwrap(), Framing::Lines);
        assert_eq!(parse_framing(b"json").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(parse_key_separator(b"\t").unwrap(), Some(b"\t".to_vec()));
        assert_eq!(parse_key_separator(b" ").unwrap(), Some(b" ".to_vec()));
        assert_eq!(parse_key_separator(b"").unwrap(), None);
        assert_eq!(
            parse_key_separator(b"a\nb").unwrap_err().errno(),
            libc::EINVAL
        );
        assert_eq!(parse_retention(b"60000").unwrap(), Some(60_000));
        assert_eq!(parse_retention(b"-1").unwrap(), None);
        assert_eq!(parse_retention(b"-2").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(format_retention(None), b"-1");
        assert_eq!(format_retention(Some(5)), b"5");
    }

    #[test]
    fn consumer_groups_and_positions() {
        assert_eq!(parse_group(b"mirror.v2_a-b").unwrap(), "mirror.v2_a-b");
        for bad in [&b""[..], b"a b", b"a/b", b"\xff", &[b'g'; 201]] {
            assert_eq!(parse_group(bad).unwrap_err().errno(), libc::EINVAL);
        }
        assert_eq!(parse_position(b"42\n").unwrap(), 42);
        for bad in [&b"-1"[..], b"", b"x", b"1.5"] {
            assert_eq!(parse_position(bad).unwrap_err().errno(), libc::EINVAL);
        }
        assert_eq!(consumer_name("g"), "user.consumer.g");
    }

    #[test]
    fn offset_and_time_arguments() {
        assert_eq!(parse_offset(b"42").unwrap(), 42);
        assert_eq!(parse_offset(b"x").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(parse_offset(b"-1").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(parse_time(b"1000").unwrap(), 1_000);
        assert_eq!(parse_time(b"1970-01-01T00:00:01+00:00").unwrap(), 1_000);
        assert_eq!(parse_time(b"soon").unwrap_err().errno(), libc::EINVAL);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const HOLDERS: [XattrHolder; 6] = [
        XattrHolder::Root,
        XattrHolder::Topic,
        XattrHolder::Partition,
        XattrHolder::Segment,
        XattrHolder::Stream,
        XattrHolder::Plain,
    ];

    /// Attribute names as users write them: known names, prefixes with keys and arguments.
    fn name() -> impl Strategy<Value = Vec<u8>> {
        let known: Vec<&str> = HOLDERS.iter().flat_map(|&h| fixed_names(h)).collect();
        let prefixes = vec![
            "user.key.",
            "user.offsets.",
            "user.offset.",
            "user.time.",
            "user.consumer.",
            "user.",
        ];
        prop_oneof![
            proptest::sample::select(known).prop_map(|n| n.as_bytes().to_vec()),
            (
                proptest::sample::select(prefixes),
                proptest::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(|(prefix, rest)| [prefix.as_bytes(), &rest].concat()),
        ]
    }

    /// Values as users write them to settings.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string().into_bytes()),
            Just(b"-1".to_vec()),
            Just(b" 3\n".to_vec()),
            Just(b"lines".to_vec()),
            Just(b"raw".to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(fuzzing::config(1000))]

        /// Every name parses or is unknown on every kind of node; a per-key or argument name
        /// keeps exactly the bytes after its prefix.
        #[test]
        fn any_attribute_name_parses_or_is_unknown(
            name in fuzzing::garbage_or_damaged(name(), 300)
        ) {
            for holder in HOLDERS {
                let argument = match XattrName::parse(holder, &name) {
                    Some(XattrName::Key(rest)) => Some((KEY_PREFIX, rest)),
                    Some(XattrName::Offsets(rest)) => Some((OFFSETS_PREFIX, rest)),
                    Some(XattrName::Offset(rest)) => {
                        let _ = parse_offset(rest);
                        Some((OFFSET_PREFIX, rest))
                    }
                    Some(XattrName::Time(rest)) => {
                        let _ = parse_time(rest);
                        Some((TIME_PREFIX, rest))
                    }
                    Some(XattrName::Consumer(rest)) => {
                        let _ = parse_group(rest);
                        Some((CONSUMER_PREFIX, rest))
                    }
                    _ => None,
                };
                if let Some((prefix, rest)) = argument {
                    prop_assert_eq!([prefix, rest].concat(), name.clone());
                }
            }
        }

        /// Every value parses or is refused with EINVAL; a retention limit reads back as it
        /// was set, and a size probe never returns a cut value.
        #[test]
        fn any_setting_value_parses_or_is_refused_with_einval(
            value in fuzzing::garbage_or_damaged(value(), 40),
            buffer_size in any::<u32>(),
        ) {
            let refused_with_einval = |errno: i32| errno == libc::EINVAL;
            if let Err(e) = parse_partitions(&value) { prop_assert!(refused_with_einval(e.errno())); }
            if let Err(e) = parse_framing(&value) { prop_assert!(refused_with_einval(e.errno())); }
            if let Err(e) = parse_key_separator(&value) { prop_assert!(refused_with_einval(e.errno())); }
            if let Err(e) = parse_position(&value) { prop_assert!(refused_with_einval(e.errno())); }
            match parse_retention(&value) {
                Ok(limit) => prop_assert_eq!(parse_retention(&format_retention(limit)).ok(), Some(limit)),
                Err(e) => prop_assert!(refused_with_einval(e.errno())),
            }
            if let Ok(XattrReply::Value(served)) = fit(value.clone(), buffer_size) {
                prop_assert_eq!(served, value);
            }
        }
    }
}
