//! `Manifest::parse` on any bytes: an error, never a panic; a manifest that
//! parses has canonical bytes that parse back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillup_core::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let _ = m.check_case_collisions();
        let again = Manifest::parse(&m.to_bytes()).expect("canonical bytes parse");
        assert_eq!(again, m);
        assert_eq!(again.digest(), m.digest());
    }
});
