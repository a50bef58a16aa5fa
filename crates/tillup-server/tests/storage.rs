//! The shared file store over a real S3-compatible server (moto, started
//! by the test): what one server shares another can fetch, verified; what
//! was altered in the bucket is refused; upgrade documents are shared.

use object_store::ObjectStore;
use tillup_core::Sha256Hex;
use tillup_server::storage::{BlobsLocation, Document, Storage};
use tillup_server::{DataDir, Error};

struct Two {
    a: Storage,
    b: Storage,
    s3: tillup_testbed::S3,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _rt: tokio::runtime::Runtime,
}

/// Two servers' storages (two data folders) over one bucket.
fn two() -> Two {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let s3 = tillup_testbed::S3::start("tillup").unwrap();
    let location = BlobsLocation::S3 {
        url: s3.url("chain"),
        settings: s3
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Storage::open(&DataDir::new(da.path()), &location).unwrap();
    let b = Storage::open(&DataDir::new(db.path()), &location).unwrap();
    drop(_in);
    Two {
        a,
        b,
        s3,
        _dirs: (da, db),
        _rt: rt,
    }
}

#[test]
fn a_blob_shared_by_one_server_is_fetched_by_another() {
    let t = two();
    let _in = t._rt.enter();
    let big: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
    let small = b"a small file".to_vec();
    let hashes = [
        t.a.local().put_bytes(&big).unwrap(),
        t.a.local().put_bytes(&small).unwrap(),
    ];
    t.a.share(&hashes).unwrap();
    t.a.share(&hashes).unwrap(); // again: nothing to do
    assert!(
        t.b.holds(&hashes[0]),
        "a shared store answers for its blobs"
    );
    assert!(!t.b.local().has(&hashes[0]));
    t.b.fetch(&hashes).unwrap();
    assert_eq!(t.b.local().read(&hashes[0]).unwrap(), big);
    assert_eq!(t.b.read(&hashes[1]).unwrap(), small);
}

#[test]
fn a_blob_altered_in_the_bucket_is_refused() {
    let t = two();
    let _in = t._rt.enter();
    let good = Sha256Hex::of(b"good bytes");
    let hex = good.to_string();
    // Someone with write access to the bucket puts other bytes under its name.
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&t.s3.endpoint)
        .with_bucket_name(&t.s3.bucket)
        .with_access_key_id("tillup")
        .with_secret_access_key("tillup-secret")
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    let key = object_store::path::Path::from(format!("chain/blobs/{}/{hex}", &hex[..2]));
    t._rt
        .block_on(raw.put(&key, b"evil bytes".to_vec().into()))
        .unwrap();
    let err = t.b.fetch(&[good]).unwrap_err();
    assert!(matches!(err, Error::Fs(_)), "{err}");
    assert!(!t.b.local().has(&good), "nothing unverified is kept");
}

#[test]
fn upgrade_documents_are_shared_and_removed_together() {
    let t = two();
    let _in = t._rt.enter();
    let backup = Document::Backup {
        store: "s1".into(),
        upgrade: "u1".into(),
    };
    let result = Document::Results {
        store: "s1".into(),
        upgrade: "u1".into(),
    };
    assert_eq!(t.b.get_document(&backup).unwrap(), None);
    t.a.put_document(&backup, b"{\"terminals\":[]}".to_vec())
        .unwrap();
    t.a.put_document(&result, b"{}".to_vec()).unwrap();
    assert_eq!(
        t.b.get_document(&backup).unwrap().as_deref(),
        Some(&b"{\"terminals\":[]}"[..])
    );
    t.b.remove_upgrade("s1", "u1").unwrap();
    assert_eq!(t.a.get_document(&backup).unwrap(), None);
    assert_eq!(t.a.get_document(&result).unwrap(), None);
    t.b.remove_upgrade("s1", "u1").unwrap(); // again: nothing to remove
}

#[test]
fn a_blobs_option_other_than_s3_is_refused_clearly() {
    let err = BlobsLocation::parse("/srv/blobs").unwrap_err();
    assert!(err.to_string().contains("s3://BUCKET/PREFIX"), "{err}");
}
