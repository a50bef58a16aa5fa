//! `tillup-server`: a thin command line over the `tillup_server` library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jiff::Timestamp;
use semver::Version;
use tillup_core::log::Notes;
use tillup_server::ops::{self, PublishRequest};
use tillup_server::{AppState, DataDir, KeySource, Limits};

/// The chain's update server: publishes signed releases and serves the stores.
#[derive(Parser, Debug)]
#[command(name = "tillup-server", version)]
struct Cli {
    /// The data folder (database, blobs, keys, store uploads).
    #[arg(long, global = true, env = "TILLUP_SERVER_DATA")]
    data: Option<PathBuf>,
    /// The minisign secret key to sign with [default: DATA/keys/tillup.key];
    /// its password, if any, comes from TILLUP_KEY_PASSWORD.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Where the state lives: a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB),
    /// shared by several servers, or a SQLite file [default: DATA/tillup.db].
    #[arg(
        long,
        global = true,
        env = "TILLUP_SERVER_DATABASE",
        value_name = "URL|FILE"
    )]
    database: Option<String>,
    /// Where blobs and upgrade documents live: an S3-compatible bucket
    /// (s3://BUCKET/PREFIX; endpoint and keys from AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION), shared by
    /// several servers [default: DATA/blobs and DATA/stores].
    #[arg(long, global = true, env = "TILLUP_SERVER_BLOBS", value_name = "URL")]
    blobs: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Make an unprotected signing key pair in DATA/keys/; prints the public key line.
    Keygen {
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
    /// Publish a release folder (or a .zip of it) and re-sign its channel's log.
    Publish {
        /// The release's program folder, or a .zip whose entries are the
        /// paths inside it (checked and bounded: no `..`, links, duplicates, bombs).
        folder: PathBuf,
        /// The release's version (semver).
        #[arg(long)]
        version: Version,
        /// Release notes in English.
        #[arg(long, default_value = "")]
        notes_en: String,
        /// Release notes in Chinese (zh-CN).
        #[arg(long, default_value = "")]
        notes_zh: String,
        /// Mark the release critical (it cannot be skipped).
        #[arg(long)]
        critical: bool,
        /// The oldest version it can upgrade from.
        #[arg(long)]
        min_from: Option<Version>,
        /// A terminal model it supports (repeat; none means all).
        #[arg(long = "model")]
        models: Vec<String>,
        /// A glob of terminal-local files an upgrade keeps (repeat).
        #[arg(long = "preserve")]
        preserve: Vec<String>,
        /// The channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The release date, RFC 3339 [default: now].
        #[arg(long)]
        date: Option<Timestamp>,
        /// Republish a version that exists (listeners will report it as republished).
        #[arg(long)]
        replace: bool,
        /// Admit only this store to install it (repeat: a staged rollout's
        /// first wave); `admit` widens it later [default: every store].
        #[arg(long = "store")]
        stores: Vec<String>,
    },
    /// Set which stores may install a published release (a staged rollout
    /// by hand) and sign the channel's next log: stores act on it at their
    /// next check. A store not admitted does not see the release.
    #[command(group(clap::ArgGroup::new("who").required(true).args(["stores", "all", "none"])))]
    Admit {
        /// The release's version.
        #[arg(long)]
        version: Version,
        /// The channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The stores admitted (exactly these, from now on).
        stores: Vec<String>,
        /// Admit every store of the channel (the rollout is complete).
        #[arg(long)]
        all: bool,
        /// Admit no store (the rollout stops: no new installs).
        #[arg(long)]
        none: bool,
        /// How long the new log stays valid (at most 14 days).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u16).range(1..=14))]
        expires_in_days: u16,
    },
    /// Write a release, with its channel's signed log, into one bundle
    /// file for a store without a network (`tillup import FILE` there).
    /// The bundle is good until that log expires.
    Export {
        /// The release's version.
        #[arg(long)]
        version: Version,
        /// The channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The bundle file to write (replaced whole).
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-sign a channel's log with the next sequence.
    SignLog {
        /// The channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// How long the log stays valid (at most 14 days; `serve` re-signs
        /// it when half is gone).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u16).range(1..=14))]
        expires_in_days: u16,
    },
    /// Make the chain's root key pair in OUT (offline media, not the data
    /// folder): stores and terminals pin its public line; it signs only
    /// key lists (`sign-keys`).
    RootKeygen {
        /// Where to write root.key and root.pub.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing pair.
        #[arg(long)]
        force: bool,
    },
    /// Sign a list of the keys allowed to sign logs with the root key
    /// (offline); `keys import` puts it on the server.
    SignKeys {
        /// The root's secret key file; its password, if any, comes from TILLUP_KEY_PASSWORD.
        #[arg(long)]
        root_key: PathBuf,
        /// Higher than every list signed before.
        #[arg(long)]
        version: u64,
        /// An online public key (`RW…` line) allowed to sign logs; repeat
        /// it to allow several (the old and the new while rotating).
        #[arg(long = "online-key", required = true)]
        keys: Vec<String>,
        /// A new root: every list after this one must be signed by it.
        #[arg(long)]
        next_root: Option<String>,
        /// How long the list stays valid.
        #[arg(long, default_value_t = 365)]
        valid_days: u16,
        /// Where to write the signed list.
        #[arg(long)]
        out: PathBuf,
    },
    /// Manage the key lists the server hands the stores.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Staged rollouts of a release across the channel's stores: waves
    /// that advance by themselves on the stores' reports (while `serve`
    /// runs with the key) and halt on failures.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Manage the people who sign in to the server's pages and admin API.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print the audit trail (who did what, newest first) as JSON.
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print a store's reports as a JSON array.
    Reports {
        /// The store's id.
        store: String,
    },
    /// Serve the HTTP API.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8700")]
        listen: SocketAddr,
        /// The largest blob accepted, in bytes.
        #[arg(long, default_value_t = Limits::default().max_blob)]
        max_blob_bytes: u64,
        /// The bytes of files one store may upload in all.
        #[arg(long, env = "TILLUP_STORE_QUOTA_BYTES", default_value_t = Limits::default().store_quota)]
        store_quota_bytes: u64,
    },
    /// Print the OpenAPI description of the server's HTTP API (JSON); a
    /// running server serves it at /openapi.json.
    Openapi,
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Add a store; prints its new token (shown once).
    Add {
        /// The store's id (A-Z a-z 0-9 . _ -).
        store: String,
    },
    /// List the stores.
    List,
    /// Refuse a store's token from now on (a stolen or retired host); its
    /// backups and reports stay. `rotate-token` lets it in again.
    Revoke {
        /// The store's id.
        store: String,
    },
    /// Give a store a new token (shown once); the old one is refused at once.
    RotateToken {
        /// The store's id.
        store: String,
    },
    /// Set the channels whose logs a store may read (a new store reads `stable`).
    Channels {
        /// The store's id.
        store: String,
        /// Every channel it may read.
        #[arg(required = true)]
        channels: Vec<String>,
    },
    /// Set a store's labels, which rollouts choose stores by (`rollout
    /// start --label`): `region=north`, `mall`, … (none: clears them).
    Label {
        /// The store's id.
        store: String,
        /// Every label it carries (A-Z a-z 0-9 . _ - =).
        labels: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// Start a rollout: named pilot stores first, then shares of the
    /// other stores reading the channel (cumulative, ending at 100).
    Start {
        /// The release's version.
        #[arg(long)]
        version: Version,
        /// The channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// A pilot store (repeat): the first wave.
        #[arg(long = "pilot")]
        pilots: Vec<String>,
        /// A wave's share of the other stores, in percent (repeat, growing, the last 100).
        #[arg(long = "wave", default_values_t = [100u8])]
        waves: Vec<u8>,
        /// The share of a wave's stores that must succeed before the next starts.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
        success_percent: u8,
        /// The share of a wave's stores whose failure halts the rollout (more than this many).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        error_percent: u8,
        /// How long each wave runs at least, in minutes.
        #[arg(long, default_value_t = 60)]
        soak_minutes: u64,
        /// A second person must approve it before its first wave starts.
        #[arg(long)]
        approval: bool,
        /// Only stores carrying this label (repeat: all of them), as
        /// `store label` set them.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only stores whose tills all run this version now (repeat: any
        /// of them).
        #[arg(long = "running")]
        running: Vec<Version>,
        /// Only stores with a till of this model (repeat: any of them), by
        /// their newest report.
        #[arg(long = "model")]
        models: Vec<String>,
    },
    /// List the rollouts, newest first (JSON).
    List,
    /// Show a rollout and what its stores reported (JSON).
    Show {
        /// The rollout's id.
        id: String,
    },
    /// Approve a rollout another person started.
    Approve { id: String },
    /// Hold a rollout at its wave.
    Pause { id: String },
    /// Let a paused rollout go on.
    Resume { id: String },
    /// Start the next wave now.
    Advance { id: String },
    /// Stop a rollout: no store not yet upgraded installs it.
    Abort { id: String },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add a person. Their password is asked for (not shown), or read
    /// from the first line of standard input when it is not a terminal.
    Add {
        /// Their sign-in name (A-Z a-z 0-9 . _ -).
        name: String,
        /// What they may do: viewer (look), releaser (also publish and run
        /// rollouts), admin (also manage stores and people).
        #[arg(long, value_parser = tillup_server::admin::parse_role)]
        role: tillup_core::roles::Role,
    },
    /// List the people.
    List,
    /// Disable a person: they cannot sign in, and their sessions end now.
    Disable {
        /// Their sign-in name.
        name: String,
    },
    /// Issue an admin token for a script acting as this person (with their
    /// role): printed once, sent as `Authorization: Bearer TOKEN` to the
    /// admin API. Disabling the person ends it.
    Token {
        /// Their sign-in name.
        name: String,
        /// How many days it lasts (at most 366).
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Keep a key list `sign-keys` wrote; stores take it at their next check.
    Import {
        /// The signed list.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // Every file of the server's is data: keys, backups, the database.
    tillup_fs::keep_new_files_private();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "tillup-server: error: {}",
                tillup_core::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The root key's commands run offline, without a data folder.
    match &cli.command {
        Command::RootKeygen { out, force } => {
            let keys = tillup_server::keylist::root_keygen(out, *force)?;
            println!("{}", keys.public_line);
            eprintln!(
                "root secret key: {} (keep it offline: it signs only key lists)\nroot public key: {} (pin the line above as public_key in every listener's config and trust_key in every agent's)",
                keys.secret_path.display(),
                keys.public_path.display()
            );
            return Ok(());
        }
        Command::SignKeys {
            root_key,
            version,
            keys,
            next_root,
            valid_days,
            out,
        } => {
            let signed = tillup_server::keylist::sign_key_list(
                &KeySource::from_env(root_key.clone()),
                &tillup_server::keylist::KeyListSpec {
                    version: *version,
                    keys: keys.clone(),
                    next_root: next_root.clone(),
                    valid_for: ops::days(i64::from(*valid_days)),
                },
                Timestamp::now(),
            )?;
            tillup_fs::write_json_atomic(out, &signed)?;
            eprintln!(
                "key list {version} written to {}; on the server: tillup-server keys import {}",
                out.display(),
                out.display()
            );
            return Ok(());
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&tillup_server::openapi::description())?
            );
            return Ok(());
        }
        Command::Keygen { .. }
        | Command::Publish { .. }
        | Command::Export { .. }
        | Command::SignLog { .. }
        | Command::Admit { .. }
        | Command::Store { .. }
        | Command::Keys { .. }
        | Command::Reports { .. }
        | Command::User { .. }
        | Command::Rollout { .. }
        | Command::Audit { .. }
        | Command::Serve { .. } => {}
    }
    let root = cli
        .data
        .context("the data folder is not set: pass --data DIR or set TILLUP_SERVER_DATA")?;
    let data = DataDir::new(root);
    let key = KeySource::from_env(cli.key.unwrap_or_else(|| data.secret_key()));
    let database = cli.database.as_deref().map_or_else(
        || tillup_server::Location::Sqlite(data.db()),
        tillup_server::Location::parse,
    );
    let blobs = cli
        .blobs
        .as_deref()
        .map(tillup_server::BlobsLocation::parse)
        .transpose()?
        .unwrap_or(tillup_server::BlobsLocation::Local);
    // The object store's client runs on it (the command line's work too).
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let _entered = rt.enter();
    let open_db = || {
        database
            .open()
            .with_context(|| format!("opening the database {database}"))
    };
    match cli.command {
        Command::Keygen { force } => {
            let out = ops::keygen(&data, force)?;
            println!("{}", out.public_line);
            eprintln!(
                "secret key: {} (keep it private)\npublic key: {} (put the line above in every listener's config)",
                out.secret_path.display(),
                out.public_path.display()
            );
        }
        Command::Publish {
            folder,
            version,
            notes_en,
            notes_zh,
            critical,
            min_from,
            models,
            preserve,
            channel,
            date,
            replace,
            stores,
        } => {
            let db = open_db()?;
            let storage = tillup_server::Storage::open(&data, &blobs)?;
            let req = PublishRequest {
                folder,
                version,
                channel: channel.clone(),
                date: date.unwrap_or_else(Timestamp::now),
                notes: Notes {
                    en: notes_en,
                    zh_cn: notes_zh,
                },
                critical,
                min_from,
                models,
                preserve,
                replace,
                stores: (!stores.is_empty()).then_some(stores),
            };
            let p = ops::publish(&*db, &storage, &key, req)?;
            audited(&*db, "publish", &format!("{channel}/{}", p.release.version))?;
            if p.replaced {
                eprintln!(
                    "warning: release {} was replaced; listeners of stores that installed it will report it as republished",
                    p.release.version
                );
            }
            println!(
                "published {} on channel {}: {} files, {} bytes, manifest {}; log sequence {}",
                p.release.version, channel, p.files, p.release.size, p.release.sha256, p.sequence
            );
        }
        Command::Admit {
            version,
            channel,
            stores,
            all,
            none,
            expires_in_days,
        } => {
            let admitted = match (all, none) {
                (true, _) => None,
                (_, true) => Some(Vec::new()),
                (false, false) => Some(stores),
            };
            let db = open_db()?;
            let log = ops::admit(
                &*db,
                &key,
                &channel,
                &version,
                admitted.clone(),
                ops::days(i64::from(expires_in_days)),
                Timestamp::now(),
            )?;
            let who = match &admitted {
                None => "every store".to_owned(),
                Some(s) if s.is_empty() => "no store".to_owned(),
                Some(s) => s.join(", "),
            };
            audited(&*db, "admit", &format!("{channel}/{version}: {who}"))?;
            eprintln!(
                "{channel} {version} admits {who}; log sequence {} signed: stores act on it at their next check",
                log.sequence
            );
        }
        Command::Export {
            version,
            channel,
            out,
        } => {
            let db = open_db()?;
            let storage = tillup_server::Storage::open(&data, &blobs)?;
            let e = tillup_server::export::export(&*db, &storage, &channel, &version, &out)?;
            println!(
                "wrote {}: release {version} of channel {channel}, {} files, {} bytes; log sequence {}, to be imported before it expires at {}",
                out.display(),
                e.files,
                e.bytes,
                e.sequence,
                e.expires
            );
        }
        Command::SignLog {
            channel,
            expires_in_days,
        } => {
            let db = open_db()?;
            let log = ops::sign_log(
                &*db,
                &key,
                &channel,
                ops::days(i64::from(expires_in_days)),
                Timestamp::now(),
            )?;
            println!(
                "signed the log of channel {channel}: sequence {}, expires {}",
                log.sequence, log.expires
            );
        }
        Command::Store {
            command: StoreCommand::Add { store },
        } => {
            let db = open_db()?;
            let token = ops::add_store(&*db, &store, Timestamp::now())?;
            audited(&*db, "store.add", &store)?;
            println!("{token}");
            eprintln!(
                "store {store} added; give the token above to its listener: it is not shown again"
            );
        }
        Command::Store {
            command: StoreCommand::List,
        } => {
            for s in open_db()?.stores()? {
                let last = s
                    .last_check
                    .map_or_else(|| "never".to_owned(), |t| t.to_string());
                let revoked = s
                    .revoked
                    .map_or_else(String::new, |t| format!("\trevoked {t}"));
                println!(
                    "{}\tadded {}\tlast check {}{revoked}",
                    s.id, s.created, last
                );
            }
        }
        Command::Store {
            command: StoreCommand::Revoke { store },
        } => {
            let db = open_db()?;
            ops::revoke_store(&*db, &store, Timestamp::now())?;
            audited(&*db, "store.revoke", &store)?;
            eprintln!(
                "store {store} revoked: its token is refused from its next request; `store rotate-token {store}` lets it in again with a new token"
            );
        }
        Command::Keys {
            command: KeysCommand::Import { file },
        } => {
            let list = tillup_server::keylist::import_key_list(&*open_db()?, &file)?;
            eprintln!(
                "key list {} imported ({} key(s){}); stores take it at their next check",
                list.version,
                list.keys.len(),
                if list.next_root.is_some() {
                    ", and a new root"
                } else {
                    ""
                }
            );
        }
        Command::RootKeygen { .. } | Command::SignKeys { .. } | Command::Openapi => {
            unreachable!("handled above")
        }
        Command::Store {
            command: StoreCommand::Channels { store, channels },
        } => {
            let db = open_db()?;
            ops::set_store_channels(&*db, &store, &channels)?;
            audited(&*db, "store.channels", &store)?;
            eprintln!("store {store} reads channels: {}", channels.join(", "));
        }
        Command::Store {
            command: StoreCommand::Label { store, labels },
        } => {
            let db = open_db()?;
            ops::set_store_labels(&*db, &store, &labels)?;
            audited(
                &*db,
                "store.label",
                &format!("{store}: {}", labels.join(" ")),
            )?;
            eprintln!("store {store} is labelled: {}", labels.join(", "));
        }
        Command::Store {
            command: StoreCommand::RotateToken { store },
        } => {
            let db = open_db()?;
            let token = ops::rotate_store_token(&*db, &store)?;
            audited(&*db, "store.rotate-token", &store)?;
            println!("{token}");
            eprintln!(
                "store {store} has a new token: put the token above in its listener's config (store_token); the old one is refused from now on"
            );
        }
        Command::Rollout { command } => rollout(&*open_db()?, &key, command)?,
        Command::User {
            command: UserCommand::Add { name, role },
        } => {
            let db = open_db()?;
            let password = read_password(&name)?;
            tillup_server::people::add(&*db, &name, role, &password, Timestamp::now())?;
            audited(&*db, "user.add", &format!("{name} ({role})"))?;
            eprintln!("{name} added as {role}; they sign in at the server's address");
        }
        Command::User {
            command: UserCommand::List,
        } => {
            for p in open_db()?.people()? {
                let disabled = p
                    .disabled
                    .map_or_else(String::new, |t| format!("\tdisabled {t}"));
                println!("{}\t{}\tadded {}{disabled}", p.name, p.role, p.created);
            }
        }
        Command::User {
            command: UserCommand::Disable { name },
        } => {
            let db = open_db()?;
            db.disable_person(&name, Timestamp::now())?;
            audited(&*db, "user.disable", &name)?;
            eprintln!("{name} is disabled: signed out everywhere, and cannot sign in again");
        }
        Command::User {
            command: UserCommand::Token { name, days },
        } => {
            let db = open_db()?;
            let token = tillup_server::people::issue_token(&*db, &name, days, Timestamp::now())?;
            audited(&*db, "user.token", &format!("{name} ({days} days)"))?;
            println!("{token}");
            eprintln!(
                "a token acting as {name}: send it as `Authorization: Bearer TOKEN` to /v1/admin/…; it is not shown again"
            );
        }
        Command::Audit { limit } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&open_db()?.audit(limit)?)?
            );
        }
        Command::Reports { store } => {
            tillup_server::error::check_id("store", &store)?;
            let db = open_db()?;
            if !db.store_exists(&store)? {
                return Err(tillup_server::Error::UnknownStore(store).into());
            }
            println!("{}", serde_json::to_string_pretty(&db.reports(&store)?)?);
        }
        Command::Serve {
            listen,
            max_blob_bytes,
            store_quota_bytes,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let state = AppState::open(
                &data,
                &database,
                &blobs,
                Limits {
                    max_blob: max_blob_bytes,
                    store_quota: store_quota_bytes,
                    ..Limits::default()
                },
            )?;
            let key = match key.load() {
                Ok(_) => Some(key),
                Err(e) => {
                    eprintln!("warning: {e}; logs will not be re-signed before they expire");
                    None
                }
            };
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                let addr = listener.local_addr()?;
                let mut out = std::io::stdout().lock();
                writeln!(out, "listening on http://{addr}")?;
                out.flush()?;
                drop(out);
                tillup_server::serve(listener, state, key)
                    .await
                    .context("serving")
            })?;
        }
    }
    Ok(())
}

/// `tillup-server rollout …`.
fn rollout(
    db: &dyn tillup_server::Db,
    key: &KeySource,
    command: RolloutCommand,
) -> anyhow::Result<()> {
    use tillup_core::rollout::{Event, Plan, StoreFilter, WaveSpec, WaveStores};
    use tillup_server::rollouts;
    let now = Timestamp::now();
    let (id, event, action) = match command {
        RolloutCommand::Start {
            version,
            channel,
            pilots,
            waves,
            success_percent,
            error_percent,
            soak_minutes,
            approval,
            labels,
            running,
            models,
        } => {
            let wave = |name: String, stores| WaveSpec {
                name,
                stores,
                success_percent,
                error_percent,
                soak_secs: soak_minutes.saturating_mul(60),
            };
            let mut plan = Plan {
                waves: Vec::new(),
                requires_approval: approval,
                filter: StoreFilter {
                    labels: labels.into_iter().collect(),
                    running: running.into_iter().collect(),
                    models: models.into_iter().collect(),
                },
            };
            if !pilots.is_empty() {
                plan.waves.push(wave(
                    "pilot".into(),
                    WaveStores::Named(pilots.into_iter().collect()),
                ));
            }
            for p in waves {
                plan.waves
                    .push(wave(format!("{p} %"), WaveStores::Share(p)));
            }
            let row = rollouts::start(db, key, &channel, &version, plan, &cli_user(), now)?;
            audited(
                db,
                "rollout.start",
                &format!("{} ({channel} {version})", row.id),
            )?;
            println!("{}", serde_json::to_string_pretty(&row)?);
            eprintln!(
                "rollout {} started: {} wave(s) over {} store(s)",
                row.id,
                row.waves.len(),
                row.waves.iter().map(|w| w.len()).sum::<usize>()
            );
            return Ok(());
        }
        RolloutCommand::List => {
            println!("{}", serde_json::to_string_pretty(&db.rollouts()?)?);
            return Ok(());
        }
        RolloutCommand::Show { id } => {
            let row = db
                .rollout(&id)?
                .with_context(|| format!("there is no rollout `{id}`"))?;
            let results = rollouts::results(db, &row)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"rollout": row, "results": results})
                )?
            );
            return Ok(());
        }
        RolloutCommand::Approve { id } => (id, Event::Approve { by: cli_user() }, "approve"),
        RolloutCommand::Pause { id } => (id, Event::Pause { by: cli_user() }, "pause"),
        RolloutCommand::Resume { id } => (id, Event::Resume { by: cli_user() }, "resume"),
        RolloutCommand::Advance { id } => (id, Event::Advance { by: cli_user() }, "advance"),
        RolloutCommand::Abort { id } => (id, Event::Abort { by: cli_user() }, "abort"),
    };
    let row = rollouts::act(db, key, &id, &event, now)?;
    audited(db, &format!("rollout.{action}"), &id)?;
    println!("{}", serde_json::to_string_pretty(&row.state)?);
    Ok(())
}

/// Who runs this command line, as the audit trail and a rollout name them.
fn cli_user() -> String {
    format!(
        "cli:{}",
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into())
    )
}

/// Records in the audit trail that the person at this command line did
/// `action` to `subject` (as `cli:USER`).
fn audited(db: &dyn tillup_server::Db, action: &str, subject: &str) -> anyhow::Result<()> {
    tillup_server::people::audit(db, &cli_user(), action, subject, Timestamp::now())
        .context("recording the action in the audit trail")
}

/// A new person's password: asked twice without echo on a terminal, else
/// the first line of standard input.
fn read_password(name: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {name}: "))?;
        let again = rpassword::prompt_password("the same again: ")?;
        anyhow::ensure!(
            first == again,
            "the two passwords differ; nothing was changed"
        );
        return Ok(first);
    }
    let mut line = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::io::stdin(),
            tillup_server::people::MAX_PASSWORD_BYTES as u64 + 2,
        ),
        &mut line,
    )?;
    let password = line.lines().next().unwrap_or_default().to_owned();
    anyhow::ensure!(
        !password.is_empty(),
        "no password on standard input: type it at a terminal, or pipe it in (printf '%s\\n' \"$PASSWORD\" | tillup-server user add …)"
    );
    Ok(password)
}

#[cfg(test)]
mod tests {
    /// Clap checks the definitions (two options of one name, …) only when
    /// a command is parsed; this parses them all.
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
