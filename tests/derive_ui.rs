//! Compile-fail and compile-pass cases of `#[derive(DomainEvent)]`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/derive/*.rs");
    cases.pass("tests/ui/derive/pass/*.rs");
}
