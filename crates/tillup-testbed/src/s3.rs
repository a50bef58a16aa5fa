//! A throwaway S3-compatible server: moto's, from PyPI, in memory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::{Error, io};

/// How long moto is given to start.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Starts moto on a free loopback port, makes the bucket, says where it
/// listens, and runs until its standard input closes (so it never outlives
/// the test that started it, even one killed).
const LAUNCHER: &str = r#"
import sys
import boto3
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
url = f"http://{host}:{port}"
boto3.client("s3", endpoint_url=url, region_name="us-east-1",
             aws_access_key_id="tillup", aws_secret_access_key="tillup-secret"
             ).create_bucket(Bucket=sys.argv[1])
print(f"listening on {url}", flush=True)
sys.stdin.read()
server.stop()
"#;

/// An S3-compatible server with one bucket, stopped when dropped.
#[derive(Debug)]
pub struct S3 {
    child: Child,
    _stdin: ChildStdin,
    /// Its endpoint (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// The bucket made for the test.
    pub bucket: String,
}

/// The Python of the venv `scripts/setup` fills: `$TILLUP_VENV` or
/// `~/.cache/tillup/venv`.
fn python() -> Result<PathBuf, Error> {
    let venv = std::env::var_os("TILLUP_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tillup/venv")))
        .unwrap_or_default();
    let python = venv.join("bin/python");
    if python.exists() {
        Ok(python)
    } else {
        Err(Error::Missing {
            what: "moto (the S3-compatible server)",
            looked: python.display().to_string(),
        })
    }
}

impl S3 {
    /// Starts a server holding one empty bucket named `bucket`.
    pub fn start(bucket: &str) -> Result<Self, Error> {
        let mut child = Command::new(python()?)
            .arg("-c")
            .arg(LAUNCHER)
            .arg(bucket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting moto"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(READY_WITHIN) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::NotReady {
                    what: "moto",
                    seconds: READY_WITHIN.as_secs(),
                    log: format!("{other:?}"),
                });
            }
        };
        let endpoint = line
            .strip_prefix("listening on ")
            .ok_or_else(|| Error::Command {
                command: "moto".into(),
                detail: format!("unexpected first line `{line}`"),
            })?
            .to_owned();
        Ok(Self {
            child,
            _stdin: stdin,
            endpoint,
            bucket: bucket.to_owned(),
        })
    }

    /// The `--blobs` URL of the bucket, under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment a client of this server needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "tillup".into()),
            ("AWS_SECRET_ACCESS_KEY", "tillup-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
