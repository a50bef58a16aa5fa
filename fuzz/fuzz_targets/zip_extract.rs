//! `extract_zip` of any bytes: an error or a folder, never a panic, and a
//! refusal leaves nothing behind. Bounds are small so each run stays fast.
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tillup_fs::{ZipLimits, extract_zip};

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let dest = dir.join("out");
    let limits = ZipLimits {
        max_entries: 1000,
        max_total_bytes: 8 * 1024 * 1024,
        max_ratio: 200,
        ratio_free_bytes: 64 * 1024,
    };
    let result = extract_zip(Cursor::new(data), &dest, &limits);
    match result {
        Ok(_) => std::fs::remove_dir_all(&dest).unwrap(),
        Err(e) => {
            let left = std::fs::read_dir(dir).unwrap().count();
            assert_eq!(left, 0, "a refusal left files behind: {e}");
        }
    }
});
