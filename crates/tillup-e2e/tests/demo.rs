//! The README's first command must keep working: run the demo binary.

use std::process::Command;
use std::time::Duration;

use tillup_e2e::{bin, run, text};

#[test]
fn the_demo_upgrades_its_store_and_keeps_it_when_asked() -> anyhow::Result<()> {
    let keep = tempfile::tempdir()?;
    let dir = keep.path().join("store");
    let mut cmd = Command::new(bin("tillup-demo")?);
    cmd.arg("--keep").arg(&dir).arg("--large-mib").arg("4");
    let out = run(cmd, Duration::from_secs(600))?;
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    for n in 1..=3 {
        assert!(
            shown.contains(&format!("terminal {n}: folder = release 1.1.0")),
            "{shown}"
        );
    }
    assert!(
        shown.contains("stopped for"),
        "the table shows how long each main program was stopped: {shown}"
    );
    for part in [
        "server/tillup.db",
        "host/data/local-log.json",
        "terminals/1/cupos/VERSION",
        "terminals/3/cupos/VERSION",
    ] {
        assert!(dir.join(part).exists(), "--keep leaves {part}");
    }
    Ok(())
}
