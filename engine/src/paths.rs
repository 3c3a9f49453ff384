//! Where user data lives: the platform's data and config directories (XDG on Linux), never the
//! install. Profiles, history and outputs go under the data directory unless the user chooses.

use std::path::PathBuf;

/// The user's Headroom data directory (`$XDG_DATA_HOME/headroom`, `~/.local/share/headroom` on
/// Linux; the platform equivalents elsewhere). `$HEADROOM_DATA` overrides it.
pub fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HEADROOM_DATA") {
        return Some(PathBuf::from(d));
    }
    base_data_dir().map(|d| d.join("headroom"))
}

/// Where runs are written when the user did not choose: `<data>/runs`.
pub fn runs_dir() -> Option<PathBuf> {
    data_dir().map(|d| d.join("runs"))
}

#[cfg(target_os = "linux")]
fn base_data_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home().map(|h| h.join(".local/share")))
}

#[cfg(target_os = "macos")]
fn base_data_dir() -> Option<PathBuf> {
    home().map(|h| h.join("Library/Application Support"))
}

#[cfg(target_os = "windows")]
fn base_data_dir() -> Option<PathBuf> {
    std::env::var_os("APPDATA").map(PathBuf::from)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn base_data_dir() -> Option<PathBuf> {
    home().map(|h| h.join(".local/share"))
}

#[cfg(not(target_os = "windows"))]
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute())
}
