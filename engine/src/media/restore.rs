//! Dropping an output back in: settings restored from a Headroom output (its profile), an
//! AUTOMATIC1111 PNG (`parameters`) or a ComfyUI PNG (`prompt`, else `workflow`), with what could
//! and could not be mapped spelled out for the person.

use std::path::Path;

use super::{a1111, comfy, png, wav};
use crate::error::{Error, Result};
use crate::profile::Profile;
use crate::request::Request;

/// Which tool made the file settings were restored from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Headroom: the full profile was embedded.
    Headroom,
    /// AUTOMATIC1111 (or a tool writing its `parameters` text).
    A1111,
    /// ComfyUI (API `prompt` graph or editor `workflow`).
    ComfyUI,
}

/// What could be restored from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    /// The full profile, for Headroom outputs.
    pub profile: Option<Profile>,
    /// The request (the profile's for Headroom outputs; defaults where a foreign file is silent).
    pub request: Request,
    /// A name or path for the model, when the file names one (checkpoint name, A1111 hash).
    pub model_hint: Option<String>,
    /// What was restored, for a person (`seed: 42`, `positive prompt`).
    pub mapped: Vec<String>,
    /// What could not be mapped, e.g. `sampler 'dpmpp_sde' has no equivalent (kept euler)`.
    pub unmapped: Vec<String>,
    /// The tool that made the file.
    pub source: Source,
}

impl Restored {
    /// Nothing restored yet: default request, empty lists.
    pub(crate) fn empty(source: Source) -> Self {
        Self {
            profile: None,
            request: Request::default(),
            model_hint: None,
            mapped: Vec::new(),
            unmapped: Vec::new(),
            source,
        }
    }

    fn from_profile(p: Profile) -> Self {
        let mut r = Self::empty(Source::Headroom);
        r.request = p.request.clone();
        r.model_hint = Some(p.model.source.clone());
        r.mapped.push("everything (Headroom profile)".into());
        r.profile = Some(p);
        r
    }
}

/// Restores what it can from a Headroom, A1111 or ComfyUI PNG, a Headroom WAV, or a profile.
///
/// A Headroom profile wins when present; if it cannot be read but other settings are there,
/// those are used and the profile's problem is listed as unmapped.
///
/// # Errors
/// The file cannot be read or is damaged, or it carries no settings any of these tools write.
pub fn restore_from_file(path: &Path) -> Result<Restored> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    restore_from_bytes(&bytes, path)
}

/// [`restore_from_file`] of a file's bytes (read from `path`, which errors name).
///
/// # Errors
/// As [`restore_from_file`].
pub fn restore_from_bytes(bytes: &[u8], path: &Path) -> Result<Restored> {
    if wav::is_wav(bytes) {
        return wav::read_profile_bytes(bytes, path)?
            .map(Restored::from_profile)
            .ok_or_else(|| Error::file(path, "this WAV carries no Headroom profile: nothing to restore"));
    }
    if !png::is_png(bytes) {
        return Profile::from_bytes(bytes, path).map(Restored::from_profile);
    }
    let text = png::read_png_text_bytes(bytes, path)?;
    let mut profile_problem = None;
    if let Some(t) = text.get(png::PROFILE_KEYWORD) {
        match Profile::from_toml_str(t, path) {
            Ok(p) => return Ok(Restored::from_profile(p)),
            Err(e) => profile_problem = Some(format!("the embedded Headroom profile could not be read ({e})")),
        }
    }
    let mut problems = Vec::new();
    let mut found = None;
    if let Some(p) = text.get("prompt") {
        match comfy::parse_prompt(p) {
            Ok(r) => found = Some(r),
            Err(e) => problems.push(e),
        }
    }
    if found.is_none()
        && let Some(w) = text.get("workflow")
    {
        match comfy::parse_workflow(w) {
            Ok(r) => found = Some(r),
            Err(e) => problems.push(e),
        }
    }
    if found.is_none()
        && let Some(p) = text.get(png::PARAMETERS_KEYWORD)
    {
        found = Some(a1111::parse_parameters(p));
    }
    match found {
        Some(mut r) => {
            r.unmapped.extend(profile_problem);
            r.unmapped.extend(problems);
            Ok(r)
        }
        None => {
            let why = profile_problem.into_iter().chain(problems).collect::<Vec<_>>();
            let why = if why.is_empty() {
                "no generation settings found (no headroom, parameters, prompt or workflow text)".to_string()
            } else {
                why.join("; ")
            };
            Err(Error::file(path, why))
        }
    }
}
