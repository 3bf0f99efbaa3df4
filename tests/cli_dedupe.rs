//! The README's de-dup block, run line by line against the real `strata`
//! binary: the second produce of `evt-7c91` is named a duplicate of offset
//! 0 and the topic holds one record.

mod common;

use common::process::{run, run_readme_block, serve};

#[test]
fn readme_dedupe_block_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    let outputs: Vec<String> =
        run_readme_block(dir.path(), &server, "dedupe").into_iter().map(|(out, _)| out).collect();
    assert_eq!(outputs.len(), 4);
    assert!(outputs[1].contains("1 record(s) -> payments[0] offsets 0..=0"), "{}", outputs[1]);
    assert!(outputs[2].contains("duplicate of offset 0 (payments[0]): not appended again"), "{}", outputs[2]);
    assert!(!outputs[2].contains("record(s) ->"), "{}", outputs[2]);
    assert!(outputs[3].contains("de-dup: 1 event id(s) remembered"), "{}", outputs[3]);
    let (ok, out, err) = run(dir.path(), &server, "strata consume payments --from earliest --max 5 --format json");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "one record stored: {out}");
    broker.kill().unwrap();
    broker.wait().unwrap();
}
