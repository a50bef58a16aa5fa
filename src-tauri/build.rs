//! Tauri's build step, with the app's own commands declared so that the
//! capability file (capabilities/window.json) must grant each one the UI
//! uses: nothing is allowed by default.

fn main() {
    let commands = &[
        "start",
        "snapshot",
        "answer",
        "check_now",
        "upgrade_now",
        "save_settings",
        "show_page",
        "close_window",
    ];
    let attributes = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(commands));
    if let Err(e) = tauri_build::try_build(attributes) {
        panic!("tauri-build: {e:#}");
    }
}
