//! The listener's `Config::parse` on any text: an error, never a panic. A
//! config that parses also yields its window and next opening.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillup_listener::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text) {
        let window = c.parsed_window().expect("validate checked the window");
        let now = jiff::Timestamp::from_second(1_790_000_000).unwrap();
        let _ = window.next_start(now);
        let _ = window.contains(now);
    }
});
