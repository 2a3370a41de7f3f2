//! What a `cargo mutants` pass over `src/store/meta.rs` (from `Meta::validate` on) and
//! `src/store/format.rs` found untested (issue 9). Each test says which mutants it kills.

mod fixtures;

use std::path::Path;

use commitfs::store::{Store, StoreError};

/// A store holding topic "t" (one partition, 25 lines), closed.
fn closed_store_with_lines(dir: &Path) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 25);
    store.close().unwrap();
}

fn assert_holds_its_lines(dir: &Path) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 25);
    fixtures::assert_reads(&store, &partition, 0, 25);
    store.close().unwrap();
}

/// A format-3 `store.toml` keeps topics in `topics/<id>.toml`; one that also lists topics
/// (`[[topics]]`, as format 2 did, say from a hand edit) is refused, naming `store.toml` and
/// the byte of the list, not opened with the list silently ignored. The directory is left as
/// it was, and without the list the store opens whole. Kills the match guard
/// `!file.topics.is_empty()` replaced with `false` in `read_store_toml`.
#[test]
fn a_format_3_store_toml_that_lists_topics_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path());
    let store_toml = dir.path().join("store.toml");
    let original = std::fs::read_to_string(&store_toml).unwrap();
    assert!(original.contains("format_version = 3"), "{original}");
    let topic = std::fs::read_to_string(dir.path().join("topics/1.toml")).unwrap();
    let listed = format!("{original}\n[[topics]]\n{topic}");
    std::fs::write(&store_toml, &listed).unwrap();
    let before = fixtures::tree(dir.path());

    let refused = Store::open(dir.path(), fixtures::small_store_config())
        .err()
        .expect("a format-3 store.toml with [[topics]] must refuse the open");
    let text = refused.to_string();
    match &refused {
        StoreError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &store_toml, "{text}");
            assert_eq!(
                *offset as usize,
                listed.find("[[topics]]").unwrap(),
                "{text}"
            );
        }
        other => panic!("expected the damage in store.toml, got {other:?}"),
    }
    assert!(text.contains("topics"), "{text}");
    assert!(
        fixtures::tree(dir.path()) == before,
        "the refused open changed the directory"
    );

    std::fs::write(&store_toml, &original).unwrap();
    assert_holds_its_lines(dir.path());
}
