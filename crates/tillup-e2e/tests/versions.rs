//! A host and agents of different tillup versions: the host–agent protocol.
//! Real server, agents and `tillup` on loopback; one terminal's address
//! answers as an agent of a future tillup would.

use anyhow::{Result, ensure};
use tillup_e2e::{ReleaseSpec, Store, static_http, text};

#[test]
fn an_agent_speaking_no_protocol_of_the_host_is_left_out_saying_why() -> Result<()> {
    let mut store = Store::two_tills()?;
    let future = serde_json::json!({
        "terminal": 2, "model": "CP-500", "version": "1.0.0",
        "main": {"state": "running", "pid": 1}, "busy": false,
        "free_bytes": 1u64 << 40, "staged": null, "previous": null,
        "agent_version": "9.0.0", "protocols": {"oldest": 7, "newest": 8},
    });
    let url = static_http(
        200,
        vec![("content-type".into(), "application/json".into())],
        serde_json::to_vec(&future)?,
        50,
    )?;
    if let Some(t) = store.terminals.get_mut(&2) {
        t.listener_address = Some(url);
    }
    store.write_listener_config("prompt", &[])?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;

    let check = store.tillup_json(&["check"])?;
    let why = check["unreachable"].to_string();
    ensure!(
        why.contains("terminal 2's agent (tillup-agent 9.0.0) speaks the host–agent protocol 7 to 8, this host")
            && why.contains("speaks 1"),
        "{check}"
    );

    // The terminal it can speak to is upgraded; that one is left alone.
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update: {}", text(&out));
    store.terminals[&1].wait_running("1.1.0")?;
    Ok(())
}
