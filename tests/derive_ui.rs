//! Compile-fail and compile-pass cases of `#[derive(DomainEvent)]`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    // rustc lists the other implementors of `Deserialize` in another form
    // when the crate graph holds the NATS client (feature `nats`): that
    // case has an expected output for each graph.
    let nats_graph = cfg!(feature = "nats");
    let mut compile_fail: Vec<_> = std::fs::read_dir("tests/ui/derive")
        .expect("tests/ui/derive")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .filter(|path| !(nats_graph && path.ends_with("field-not-serializable.rs")))
        .collect();
    compile_fail.sort();
    for case in compile_fail {
        cases.compile_fail(case);
    }
    if nats_graph {
        cases.compile_fail("tests/ui/derive-nats/field-not-serializable.rs");
    }
    cases.pass("tests/ui/derive/pass/*.rs");
}
