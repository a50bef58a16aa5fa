//! Relative paths inside a program folder, checked once at the edge.
//!
//! Every path that arrives in a manifest, an archive or a request becomes a
//! [`RelPath`] before anything touches the disk, so code further in never
//! has to ask whether a path could escape its folder.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// A normalised path relative to a program folder: `/`-separated, no empty,
/// `.` or `..` component, not absolute, no drive letter, no backslash, no
/// control character.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("path `{0}` is longer than {MAX_PATH_LEN} bytes")]
    TooLong(String),
    #[error("path `{0}` is absolute; only paths inside the program folder are allowed")]
    Absolute(String),
    #[error(
        "path `{0}` starts with a drive letter; only paths inside the program folder are allowed"
    )]
    DriveLetter(String),
    #[error("path `{0}` contains `..`, which would leave the program folder")]
    ParentDir(String),
    #[error("path `{0}` contains an empty or `.` component")]
    EmptyComponent(String),
    #[error("path `{0}` contains a backslash or a control character")]
    BadCharacter(String),
    #[error("path `{path}` cannot exist on a Windows terminal: {reason}")]
    NotPortable { path: String, reason: String },
}

/// Names Windows reserves for devices, with or without an extension, in
/// any case: the list Microsoft documents, the superscript digits and the
/// console devices included.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "COM0", "COM1", "COM2", "COM3", "COM4",
    "COM5", "COM6", "COM7", "COM8", "COM9", "COM¹", "COM²", "COM³", "LPT0", "LPT1", "LPT2", "LPT3",
    "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "LPT¹", "LPT²", "LPT³",
];

/// Why a component could not be a file name on Windows, if it could not.
/// One manifest serves every terminal, so every path must suit them all.
fn unportable(part: &str) -> Option<String> {
    if let Some(c) = part
        .chars()
        .find(|c| matches!(c, ':' | '<' | '>' | '"' | '|' | '?' | '*'))
    {
        return Some(format!("`{part}` contains `{c}`"));
    }
    if part.ends_with('.') || part.ends_with(' ') {
        return Some(format!("`{part}` ends with a dot or a space"));
    }
    // Windows reads `CON .txt` as `CON` too.
    let stem = part.split('.').next().unwrap_or(part).trim_end_matches(' ');
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return Some(format!("`{part}` is a reserved device name"));
    }
    None
}

impl RelPath {
    /// Checks and wraps `s`.
    pub fn new(s: &str) -> Result<Self, PathError> {
        check(s)?;
        Ok(Self(s.to_owned()))
    }

    /// `name` inside this path, checked like any path but for the part
    /// checked already: a scan of ten thousand files checks each file's
    /// name, not its folders' again for every file.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        let s = format!("{}/{name}", self.0);
        let shown = || s.chars().take(200).collect::<String>();
        if name.contains('/') {
            check(&s)?;
        } else if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(shown()));
        } else {
            check_part(name, &shown)?;
        }
        Ok(Self(s))
    }

    /// The path as `/`-separated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The key two paths collide under on a case-insensitive file system
    /// that also takes Unicode's composed and decomposed spellings as one
    /// name (Windows, macOS).
    pub fn case_folded(&self) -> String {
        collision_key(&self.0)
    }
}

/// See [`RelPath::case_folded`].
pub(crate) fn collision_key(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfc().collect::<String>().to_lowercase()
}

impl TryFrom<String> for RelPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        check(&s)?;
        Ok(Self(s))
    }
}

/// Whether `s` is a [`RelPath`].
fn check(s: &str) -> Result<(), PathError> {
    let shown = || s.chars().take(200).collect::<String>();
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(shown()));
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute(shown()));
    }
    let b = s.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Err(PathError::DriveLetter(shown()));
    }
    for part in s.split('/') {
        check_part(part, &shown)?;
    }
    Ok(())
}

/// Checks `part`, one `/`-free component of a path (`shown` in errors).
fn check_part(part: &str, shown: &dyn Fn() -> String) -> Result<(), PathError> {
    if part.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(PathError::BadCharacter(shown()));
    }
    match part {
        ".." => Err(PathError::ParentDir(shown())),
        "" | "." => Err(PathError::EmptyComponent(shown())),
        _ => match unportable(part) {
            Some(reason) => Err(PathError::NotPortable {
                path: shown(),
                reason,
            }),
            None => Ok(()),
        },
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_and_unicode_paths() {
        for ok in ["a", "bin/pos", "数据/收银.db", "a.b/c..d/.hidden"] {
            assert_eq!(RelPath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_every_escape() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute("/etc/passwd".into())),
            ("C:/x", PathError::DriveLetter("C:/x".into())),
            ("../x", PathError::ParentDir("../x".into())),
            ("a/../../x", PathError::ParentDir("a/../../x".into())),
            ("a//b", PathError::EmptyComponent("a//b".into())),
            ("./a", PathError::EmptyComponent("./a".into())),
            ("a/", PathError::EmptyComponent("a/".into())),
            ("a\\..\\b", PathError::BadCharacter("a\\..\\b".into())),
            ("a\nb", PathError::BadCharacter("a\nb".into())),
        ];
        for (input, want) in cases {
            assert_eq!(RelPath::new(input), Err(want), "{input:?}");
        }
        assert!(matches!(
            RelPath::new(&"a".repeat(2000)),
            Err(PathError::TooLong(_))
        ));
    }

    #[test]
    fn refuses_names_a_windows_terminal_would_misread() {
        // `a/C:evil.dll` would be absolute once joined on Windows.
        for bad in [
            "a/C:evil.dll",
            "data/file.txt:stream",
            "CON",
            "logs/nul.txt",
            "Com1",
            "a/b.",
            "a/b ",
            "a/what?",
            "x*y",
            "COM0",
            "lpt0.log",
            "com¹",
            "LPT³.txt",
            "CONIN$",
            "a/conout$.txt",
            "CON .txt",
        ] {
            assert!(
                matches!(RelPath::new(bad), Err(PathError::NotPortable { .. })),
                "{bad}"
            );
        }
        for ok in ["console.log", "connect/x", "lpt10", "a.b", "数据/收银.db"] {
            RelPath::new(ok).unwrap();
        }
    }

    #[test]
    fn deserialising_checks_too() {
        let err = serde_json::from_str::<RelPath>("\"../../etc/shadow\"").unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
    }

    proptest! {
        #[test]
        fn an_accepted_path_never_leaves_its_folder(s in "[a-zC./\\\\:]{0,12}") {
            if let Ok(p) = RelPath::new(&s) {
                let joined = std::path::Path::new("/root/folder").join(p.as_str());
                let mut depth = 0i32;
                for c in joined.strip_prefix("/root/folder").unwrap().components() {
                    match c {
                        std::path::Component::Normal(_) => depth += 1,
                        _ => prop_assert!(false, "component {c:?} in {s:?}"),
                    }
                }
                prop_assert!(depth >= 1);
            }
        }

        #[test]
        fn a_joined_path_is_checked_as_the_whole_path_is(
            parent in "[a-zC.:]{1,4}(/[a-z.]{1,3})?",
            name in "[a-zC./\\:\u{1}]{0,6}",
        ) {
            if let Ok(p) = RelPath::new(&parent) {
                let whole = format!("{parent}/{name}");
                match (p.join(&name), RelPath::new(&whole)) {
                    (Ok(j), Ok(w)) => prop_assert_eq!(j, w),
                    (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                    (j, w) => prop_assert!(false, "{whole:?}: join {j:?}, whole {w:?}"),
                }
            }
        }
    }
}
