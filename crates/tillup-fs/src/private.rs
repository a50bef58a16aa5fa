//! Data at rest stays with the user that runs tillup: store backups hold
//! the terminals' sales databases, the host's configuration holds tokens.
//! Where the platform has modes, data folders are 0700 and files 0600
//! (blobs 0400); elsewhere the folders inherit the data location's access
//! rules.

use std::path::Path;

use crate::{Error, IoContext};

/// Creates `dir` (and its parents, alike) and makes it private to this user.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).at(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).at(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).at(dir)?;
        }
    }
    Ok(())
}

/// Makes everything this process creates from now on private to its user
/// (umask 077). For the server and the store host, whose every file is
/// data; not for the agent, which writes the POS program's folder.
pub fn keep_new_files_private() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_data_folder_is_made_private_even_if_it_existed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data).unwrap();
        private_dir(&dir.path().join("new/nested")).unwrap();
        for d in [data, dir.path().join("new/nested")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }
}
