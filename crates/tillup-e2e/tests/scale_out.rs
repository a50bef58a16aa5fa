//! Two `tillup-server serve` processes over one PostgreSQL and one
//! S3-compatible store (throwaway instances), behind a balancer that sends
//! each request to the next server: a store upgrades end to end with its
//! requests spread over both, and nothing it needs lives in only one of
//! them.

use anyhow::{Result, ensure};
use tillup_core::manifest::Manifest;
use tillup_e2e::balancer::Balancer;
use tillup_e2e::{
    Backend, ReleaseSpec, Server, Store, StoreSpec, build_release, expected_after, manifest_of,
    text, without_sales,
};
use tillup_testbed::{Postgres, S3};

fn shared_backend(pg: &Postgres, s3: &S3) -> Result<Backend> {
    Ok(Backend {
        args: vec![
            "--database".into(),
            pg.database("tillup")?,
            "--blobs".into(),
            s3.url("chain"),
        ],
        env: s3
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    })
}

#[test]
fn two_servers_over_one_database_and_one_bucket_upgrade_a_store() -> Result<()> {
    let pg = Postgres::start(false)?;
    let s3 = S3::start("tillup")?;
    let store = Store::new(
        None,
        StoreSpec {
            backend: shared_backend(&pg, &s3)?,
            ..StoreSpec::default()
        },
    )?;
    let second = Server::join(&store.root.join("server-b"), &store.server)?;
    let balancer = Balancer::start(&[store.server.url(), second.url()])?;
    let public_key = store.server.public_key.clone();
    store.write_listener_config_for(balancer.url(), &public_key, "prompt", &[])?;
    let before: Vec<(u32, Manifest)> = store
        .terminals
        .values()
        .map(|t| (t.number, manifest_of(&t.folder)))
        .collect();

    // Published through the second server's data folder: the first one
    // learns of the release only through the shared database and bucket.
    let rel = store.root.join("releases/1.1.0");
    build_release(&rel, &ReleaseSpec::new("1.1.0"))?;
    second.publish(&rel, "1.1.0", &[])?;
    let release = manifest_of(&rel);

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));

    for (n, old) in &before {
        let t = &store.terminals[n];
        assert_eq!(
            without_sales(&manifest_of(&t.folder)),
            without_sales(&expected_after(&release, old)),
            "terminal {n} holds 1.1.0 plus its own files"
        );
        t.wait_running("1.1.0")?;
    }
    let answered = balancer.answered();
    assert!(
        answered.iter().all(|&n| n >= 3),
        "each server answered part of the upgrade: {answered:?}"
    );
    // The report landed in the shared database, whichever server took it.
    for server in [&store.server, &second] {
        let reports: serde_json::Value =
            serde_json::from_str(&server.cli(&["reports", &store.store_id])?)?;
        let text = reports.to_string();
        assert!(
            text.contains("1.1.0"),
            "{} sees the store's report: {text}",
            server.data.display()
        );
    }
    Ok(())
}
