//! `VersionLog::parse` on any bytes: an error, never a panic; a log that
//! parses serialises and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillup_core::log::VersionLog;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = VersionLog::parse(data) {
        let again = VersionLog::parse(&log.to_bytes()).expect("a parsed log parses again");
        assert_eq!(again, log);
        let _ = log.newest();
    }
});
