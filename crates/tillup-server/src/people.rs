//! The people who sign in to the server's pages and admin API: passwords
//! hashed with Argon2id, sessions found by the SHA-256 of a random cookie
//! token (the token itself is never stored), a CSRF token per session that
//! every unsafe request must echo, and the audit trail of who did what.
//! Roles and what they allow are [`tillup_core::roles`]'.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use jiff::{SignedDuration, Timestamp};
use tillup_core::roles::Role;

use crate::db::{AuditRow, Db, PersonRow, SessionRow};
use crate::error::Error;
use crate::ops::{new_token, token_digest};

/// How long a session lasts after signing in (a working day).
pub const SESSION_LENGTH: SignedDuration = SignedDuration::from_hours(12);

/// The shortest password kept.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The longest password read (a bound on what a sign-in makes Argon2 hash).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A signed-in person, as a request's session cookie shows them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SignedIn {
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The token unsafe requests of this session must carry.
    pub csrf: String,
    /// When the session ends.
    pub expires: Timestamp,
}

/// Adds a person with `password` (checked, then hashed).
pub fn add(
    db: &dyn Db,
    name: &str,
    role: Role,
    password: &str,
    now: Timestamp,
) -> Result<(), Error> {
    crate::error::check_id("person", name)?;
    let password = hash(password)?;
    db.add_person(&PersonRow {
        name: name.to_owned(),
        role,
        password,
        created: now,
        disabled: None,
    })
}

/// Checks a password's strength and hashes it (Argon2id, a fresh salt).
pub fn hash(password: &str) -> Result<String, Error> {
    check_strength(password)?;
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Corrupt(format!("hashing a password: {e}")))
}

fn check_strength(password: &str) -> Result<(), Error> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::WeakPassword(format!(
            "is longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::WeakPassword(format!(
            "has fewer than {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

/// A hash no password matches, checked when the name is unknown so that
/// a refusal takes as long whether the name exists or not.
fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        Argon2::default()
            .hash_password(new_token().as_bytes())
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

fn matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Signs `name` in: a new session, whose cookie token is returned with it.
pub fn sign_in(
    db: &dyn Db,
    name: &str,
    password: &str,
    now: Timestamp,
) -> Result<(String, SignedIn), Error> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::SignInRefused);
    }
    let person = db.person(name)?;
    let phc = person.as_ref().map_or(decoy(), |p| p.password.as_str());
    let good = matches(phc, password);
    let person = match person {
        Some(p) if good && p.disabled.is_none() => p,
        _ => return Err(Error::SignInRefused),
    };
    open_session(db, &person, SESSION_LENGTH, now)
}

/// The longest an admin token lasts.
pub const MAX_TOKEN_DAYS: u32 = 366;

/// An admin token for scripts, acting as `name` with their role for
/// `days`: sent as `Authorization: Bearer TOKEN`, it needs no CSRF token
/// (no browser sends it by itself). Shown once; only its hash is kept.
pub fn issue_token(db: &dyn Db, name: &str, days: u32, now: Timestamp) -> Result<String, Error> {
    let person = db
        .person(name)?
        .filter(|p| p.disabled.is_none())
        .ok_or_else(|| Error::UnknownPerson(name.to_owned()))?;
    let length = SignedDuration::from_hours(24 * i64::from(days.clamp(1, MAX_TOKEN_DAYS)));
    Ok(open_session(db, &person, length, now)?.0)
}

fn open_session(
    db: &dyn Db,
    person: &PersonRow,
    length: SignedDuration,
    now: Timestamp,
) -> Result<(String, SignedIn), Error> {
    let token = new_token();
    let session = SessionRow {
        person: person.name.clone(),
        role: person.role,
        csrf: new_token(),
        // Whole seconds: what every database keeps alike.
        expires: Timestamp::from_second(now.saturating_add(length).unwrap_or(now).as_second())
            .unwrap_or(now),
    };
    db.add_session(&token_digest(&token), &session, now)?;
    Ok((token, signed_in(session)))
}

/// The person a session cookie's token belongs to, if it is valid now.
pub fn session(db: &dyn Db, token: &str, now: Timestamp) -> Result<Option<SignedIn>, Error> {
    Ok(db.session(&token_digest(token), now)?.map(signed_in))
}

/// Ends the session of `token`.
pub fn sign_out(db: &dyn Db, token: &str) -> Result<(), Error> {
    db.end_session(&token_digest(token))
}

/// Records what `who` did to `subject`.
pub fn audit(
    db: &dyn Db,
    who: &str,
    action: &str,
    subject: &str,
    now: Timestamp,
) -> Result<(), Error> {
    db.record_audit(&AuditRow {
        at: now,
        who: who.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
    })
}

/// Whether a request's CSRF token is the session's (in constant time).
pub fn csrf_matches(session: &SignedIn, sent: &str) -> bool {
    let (a, b) = (session.csrf.as_bytes(), sent.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn signed_in(s: SessionRow) -> SignedIn {
    SignedIn {
        name: s.person,
        role: s.role,
        csrf: s.csrf,
        expires: s.expires,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqliteDb;

    fn db() -> (tempfile::TempDir, SqliteDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_person_signs_in_with_their_password_only() {
        let (_d, db) = db();
        let now = t("2026-12-02T10:00:00Z");
        add(&db, "li.wei", Role::Releaser, "correct horse battery", now).unwrap();
        let stored = db.person("li.wei").unwrap().unwrap();
        assert!(
            stored.password.starts_with("$argon2id$"),
            "{}",
            stored.password
        );
        assert!(!stored.password.contains("correct horse"));

        for (name, pw) in [
            ("li.wei", "wrong horse battery"),
            ("nobody", "correct horse battery"),
        ] {
            let e = sign_in(&db, name, pw, now).unwrap_err();
            assert!(matches!(e, Error::SignInRefused), "{e}");
        }
        let (token, me) = sign_in(&db, "li.wei", "correct horse battery", now).unwrap();
        assert_eq!((me.name.as_str(), me.role), ("li.wei", Role::Releaser));
        assert_eq!(session(&db, &token, now).unwrap(), Some(me.clone()));
        assert!(csrf_matches(&me, &me.csrf));
        assert!(!csrf_matches(&me, "forged"));
        // The cookie token is not what the database keeps.
        assert!(db.session(&token, now).unwrap().is_none());
        // A session ends with its length, at sign-out, or when its person
        // is disabled.
        let later = now.saturating_add(SESSION_LENGTH).unwrap();
        assert_eq!(session(&db, &token, later).unwrap(), None);
        sign_out(&db, &token).unwrap();
        assert_eq!(session(&db, &token, now).unwrap(), None);
        let (token, _) = sign_in(&db, "li.wei", "correct horse battery", now).unwrap();
        db.disable_person("li.wei", now).unwrap();
        assert_eq!(session(&db, &token, now).unwrap(), None);
        assert!(matches!(
            sign_in(&db, "li.wei", "correct horse battery", now).unwrap_err(),
            Error::SignInRefused
        ));
    }

    #[test]
    fn weak_passwords_and_taken_names_are_refused() {
        let (_d, db) = db();
        let now = t("2026-12-02T10:00:00Z");
        let e = add(&db, "a", Role::Viewer, "short", now).unwrap_err();
        assert!(e.to_string().contains("fewer than 12 characters"), "{e}");
        add(&db, "a", Role::Viewer, "long enough passphrase", now).unwrap();
        let e = add(&db, "a", Role::Admin, "long enough passphrase", now).unwrap_err();
        assert!(matches!(e, Error::PersonExists(_)), "{e}");
        assert!(add(&db, "a b", Role::Viewer, "long enough passphrase", now).is_err());
    }
}
