//! AUTOMATIC1111's `parameters` text: written into our PNGs so other tools show the settings, and
//! read from A1111 (and Forge, Fooocus-in-A1111-mode, Civitai) images back into a request.
//!
//! The format: the prompt (any number of lines), then optionally `Negative prompt: …` (also any
//! number of lines), then one line of `Key: value` pairs separated by commas, values with commas,
//! colons or newlines quoted as JSON strings.

use super::restore::{Restored, Source};
use crate::profile::Profile;
use crate::request::{NoiseMode, Request, Scheduler};

/// The A1111 sampler name for one of ours.
fn sampler_name(s: Scheduler) -> &'static str {
    match s {
        Scheduler::Ddim => "DDIM",
        Scheduler::Euler => "Euler",
        Scheduler::EulerAncestral => "Euler a",
        Scheduler::DpmPp2M => "DPM++ 2M",
    }
}

/// Quotes a value the way A1111 does when it holds a comma, colon or newline.
fn quote(v: &str) -> String {
    if v.contains([',', ':', '\n', '"']) {
        serde_json::to_string(v).unwrap_or_else(|_| v.replace([',', ':', '\n'], " "))
    } else {
        v.to_string()
    }
}

/// The `parameters` text for a profile, e.g.
/// `prompt\nNegative prompt: neg\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 0123456789, Model: name, Version: Headroom 0.1.0`.
pub fn format_parameters(p: &Profile) -> String {
    let r = &p.request;
    let mut s = r.prompt.clone();
    if !r.negative.is_empty() {
        s.push_str("\nNegative prompt: ");
        s.push_str(&r.negative);
    }
    let mut pairs = vec![
        ("Steps", r.steps.to_string()),
        ("Sampler", sampler_name(r.scheduler).to_string()),
    ];
    if r.karras {
        pairs.push(("Schedule type", "Karras".into()));
    }
    pairs.push(("CFG scale", r.guidance.to_string()));
    pairs.push(("Seed", r.seed.to_string()));
    pairs.push(("Size", format!("{}x{}", r.width, r.height)));
    if p.model.sha256.len() >= 10 {
        // A1111's "AutoV2" hash: the first 10 hex digits of the file's SHA-256.
        pairs.push(("Model hash", p.model.sha256[..10].to_string()));
    }
    if !p.model.name.is_empty() {
        pairs.push(("Model", p.model.name.clone()));
    }
    pairs.push(("Version", format!("Headroom {}", p.build.version)));
    let line: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}: {}", quote(&v))).collect();
    s.push('\n');
    s.push_str(&line.join(", "));
    s
}

/// Parses the `Key: value, …` line into pairs, as A1111's regular expression
/// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` does.
fn parse_pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.trim().is_empty() {
        let Some(colon) = rest.find(':') else { break };
        let key = rest[..colon].trim();
        let key_ok = key.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_')
            && key.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | ' ' | '-' | '/'));
        let after = rest[colon + 1..].trim_start();
        let (value, tail) = if after.starts_with('"') {
            quoted(after)
        } else {
            match after.find(',') {
                Some(i) => (after[..i].trim().to_string(), &after[i + 1..]),
                None => (after.trim().to_string(), ""),
            }
        };
        if key_ok {
            out.push((key.to_string(), value));
        }
        rest = tail.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    out
}

/// A JSON-quoted value at the start of `s`, and what follows it.
fn quoted(s: &str) -> (String, &str) {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => {
                let raw = &s[..=i];
                let v = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw[1..i].to_string());
                let tail = s[i + 1..].trim_start();
                return (v, tail.strip_prefix(',').unwrap_or(tail));
            }
            _ => escaped = false,
        }
    }
    (s.trim_matches('"').to_string(), "")
}

/// Reads A1111 `parameters` text into a request, listing what was and was not mapped; the
/// request's noise is per image, as A1111 seeds a batch.
pub fn parse_parameters(text: &str) -> Restored {
    let text = text.trim().replace("\r\n", "\n");
    let mut lines: Vec<&str> = text.split('\n').collect();
    let last = lines.pop().unwrap_or("");
    let pairs = parse_pairs(last);
    let pairs = if pairs.len() >= 3 {
        pairs
    } else {
        lines.push(last);
        Vec::new()
    };
    let (mut prompt, mut negative, mut in_negative) = (Vec::new(), Vec::new(), false);
    for line in lines {
        let mut line = line.trim();
        if let Some(n) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = n.trim();
        }
        if in_negative { negative.push(line) } else { prompt.push(line) }
    }

    let mut out = Restored::empty(Source::A1111);
    let r = &mut out.request;
    r.prompt = prompt.join("\n");
    r.negative = negative.join("\n");
    out.mapped.push("prompt".into());
    if in_negative {
        out.mapped.push("negative prompt".into());
    }
    for (key, value) in pairs {
        map_pair(&mut out, &key, &value);
    }
    // A1111 seeds image i of a batch with seed + i: a batch made from these settings does too.
    out.request.noise = NoiseMode::PerImage;
    out.mapped.push("noise: per-image (A1111 seeds image i with seed + i)".into());
    out
}

fn map_pair(out: &mut Restored, key: &str, value: &str) {
    let r: &mut Request = &mut out.request;
    let ok = match key {
        "Steps" => value.parse().map(|v| r.steps = v).is_ok(),
        "CFG scale" => value.parse().map(|v| r.guidance = v).is_ok(),
        "Seed" => value.parse().map(|v| r.seed = v).is_ok(),
        "Size" => match value.split_once('x').map(|(w, h)| (w.trim().parse(), h.trim().parse())) {
            Some((Ok(w), Ok(h))) => {
                (r.width, r.height) = (w, h);
                true
            }
            _ => false,
        },
        "Sampler" => {
            let (name, karras) = match value.strip_suffix(" Karras") {
                Some(n) => (n, true),
                None => (value, false),
            };
            match name.parse::<Scheduler>() {
                Ok(s) => {
                    r.scheduler = s;
                    r.karras |= karras;
                    true
                }
                Err(_) => {
                    out.unmapped.push(format!("sampler '{value}' has no equivalent (kept {})", r.scheduler));
                    return;
                }
            }
        }
        "Schedule type" => match value {
            "Karras" => {
                r.karras = true;
                true
            }
            "Automatic" | "Uniform" | "Normal" => {
                r.karras = false;
                true
            }
            _ => {
                out.unmapped.push(format!("schedule type '{value}' has no equivalent"));
                return;
            }
        },
        "Model" => {
            out.model_hint = Some(value.to_string());
            true
        }
        "Model hash" => {
            if out.model_hint.is_none() {
                out.model_hint = Some(value.to_string());
            }
            true
        }
        _ => {
            out.unmapped.push(format!("{key}: {value} has no equivalent"));
            return;
        }
    };
    if ok {
        out.mapped.push(format!("{key}: {value}"));
    } else {
        out.unmapped.push(format!("{key}: '{value}' could not be read"));
    }
}
