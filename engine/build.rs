//! Records the git commit the engine is built from, for every profile's `[build]` section.
//!
//! Sets `HEADROOM_GIT_COMMIT` (the full hash of HEAD, or `unknown` outside a git checkout or
//! without git; a value already in the environment wins, for packagers) and asks cargo to rerun
//! this when HEAD moves. Uncommitted edits are not detected. Also sets `HEADROOM_CANDLE_VERSION`
//! (candle-core's version from the workspace's `Cargo.lock`, or `unknown`), since bit-exact
//! reproduction depends on candle's kernels.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Asks cargo to rerun this script when `path` changes; paths that do not exist are skipped,
/// since cargo would otherwise rerun it on every build.
fn watch(path: &str) {
    if std::path::Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// candle-core's version as `Cargo.lock` (beside the workspace root) pins it.
fn candle_version() -> Option<String> {
    // the manifest folder of this build, read at run time: a build script compiled in another
    // checkout of the same sources is reused by cargo, and a path baked in at compile time would
    // point there
    let lock = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR")?).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(lock).ok()?;
    let at = text.find("name = \"candle-core\"")?;
    let line = text[at..].lines().nth(1)?;
    Some(line.strip_prefix("version = ")?.trim_matches('"').to_string())
}

fn main() {
    println!("cargo:rustc-env=HEADROOM_CANDLE_VERSION={}", candle_version().unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-env-changed=HEADROOM_GIT_COMMIT");
    if let Ok(forced) = std::env::var("HEADROOM_GIT_COMMIT") {
        println!("cargo:rustc-env=HEADROOM_GIT_COMMIT={forced}");
        return;
    }
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(hash) => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points at, packed refs.
            for rel in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", rel]) {
                    watch(&p);
                }
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(p) = git(&["rev-parse", "--git-path", &r])
            {
                watch(&p);
            }
            hash
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=HEADROOM_GIT_COMMIT={commit}");
}
