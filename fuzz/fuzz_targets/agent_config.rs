//! The agent's `Config::parse` on any text: an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillup_agent::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text) {
        let _ = c.state_dir();
    }
});
