//! "Start tillup when I log in": the platform's autostart entry (an XDG
//! autostart `.desktop` file on Linux), through `auto-launch`, the crate
//! Tauri's autostart plugin uses.

use std::path::Path;

use auto_launch::{AutoLaunch, AutoLaunchBuilder};

fn entry(config_path: &Path) -> Result<AutoLaunch, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find tillup-tray itself: {e}"))?;
    let config = config_path.to_string_lossy();
    AutoLaunchBuilder::new()
        .set_app_name("tillup")
        .set_app_path(&exe.to_string_lossy())
        .set_args(&["--config", config.as_ref()])
        .build()
        .map_err(|e| format!("autostart: {e}"))
}

/// Whether tillup starts at login.
pub fn enabled(config_path: &Path) -> bool {
    entry(config_path)
        .and_then(|e| e.is_enabled().map_err(|e| e.to_string()))
        .unwrap_or(false)
}

/// Turns starting at login on or off.
pub fn set(config_path: &Path, on: bool) -> Result<(), String> {
    let entry = entry(config_path)?;
    let result = match (on, entry.is_enabled().unwrap_or(false)) {
        (true, _) => entry.enable(),
        (false, true) => entry.disable(),
        (false, false) => Ok(()),
    };
    result.map_err(|e| format!("cannot change starting at login: {e}"))
}
