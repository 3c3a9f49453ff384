//! Where things live. User data: the platform's data directory (XDG on Linux), never the install;
//! profiles, history and outputs go under it unless the user chooses. Read-only resources (the
//! embedded `models/`, `assets/`): the install or the repository, found by [`resource_roots`].

use std::path::{Path, PathBuf};

/// Folders that may hold Headroom's read-only resources (`models/`, `assets/`), in the order they
/// are searched: `$HEADROOM_RESOURCES`; `../lib/headroom` and `../share/headroom` from the
/// executable's folder (an installed package: the `.deb` puts them in `/usr/lib/headroom`); the
/// executable's folder itself (a portable copy); the repository the engine was built from. Roots that exist are
/// canonical (`/usr/lib/headroom`, not `/usr/bin/../lib/headroom`); those that do not are kept,
/// so a message can say where it looked.
pub fn resource_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(d) = std::env::var_os("HEADROOM_RESOURCES") {
        roots.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)) {
        roots.push(exe_dir.join("../lib/headroom"));
        roots.push(exe_dir.join("../share/headroom"));
        roots.push(exe_dir);
    }
    roots.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    roots.into_iter().map(|r| r.canonicalize().unwrap_or(r)).collect()
}

/// The first resource root holding `relative` (a file or folder such as `assets/clip`), with
/// `relative` joined: the same lookup for an install and a checkout.
pub fn find_resource(relative: impl AsRef<Path>) -> Option<PathBuf> {
    resource_roots()
        .into_iter()
        .map(|root| root.join(relative.as_ref()))
        .find(|p| p.exists())
}

/// The standard CLIP BPE vocabulary (`vocab.json`, `merges.txt`) that single-file checkpoints,
/// which carry no tokenizer, are read with: `assets/clip` under a resource root.
///
/// # Errors
/// It is under none of the [`resource_roots`].
pub fn clip_vocabulary_dir() -> crate::Result<PathBuf> {
    find_resource("assets/clip").filter(|d| d.join("vocab.json").is_file()).ok_or_else(|| {
        crate::Error::invalid(format!(
            "the CLIP vocabulary (assets/clip) is in none of the {} resource folders (set HEADROOM_RESOURCES)",
            resource_roots().len()
        ))
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// In a checkout the repository is a resource root: the CLIP vocabulary and the embedded
    /// models are found there, by a canonical path.
    #[test]
    fn the_repository_is_a_resource_root() {
        let clip = clip_vocabulary_dir().expect("assets/clip in the repository");
        assert!(clip.join("merges.txt").is_file(), "{}", clip.display());
        assert!(!clip.components().any(|c| c == std::path::Component::ParentDir), "{}", clip.display());
        assert!(find_resource("models").is_some());
        assert_eq!(find_resource("no/such/resource"), None);
    }

    /// The install locations come before the repository, so an installed binary never reads the
    /// tree it was built from while its own resources are there.
    #[test]
    fn install_locations_come_before_the_repository() {
        let roots = resource_roots();
        let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).canonicalize().unwrap();
        let repo_at = roots.iter().position(|r| *r == repo).expect("the repository is searched");
        let lib_at = roots.iter().position(|r| r.ends_with("lib/headroom")).expect("../lib/headroom is searched");
        assert!(lib_at < repo_at, "{roots:?}");
    }
}
