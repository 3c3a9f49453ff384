//! Playback through the manager thread and ring buffer, with the mock device (no sound card needed).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use headroom_ui::audio::mock::{MockOutput, NoDevice};
use headroom_ui::audio::{Player, resample};

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn tone(n: usize) -> Arc<Vec<f32>> {
    Arc::new((0..n).map(|i| ((i as f32) * 0.05).sin() * 0.5).collect())
}

/// A clip plays to the end through the mock device, then playback stops and rewinds.
#[test]
fn plays_to_the_end_and_stops() {
    let out = MockOutput::default();
    let stats = out.stats.clone();
    let p = Player::spawn(out).unwrap();
    p.load(8000, tone(4000));
    p.play();
    assert!(
        wait_until(|| p.position_fraction() > 0.0),
        "position advances"
    );
    assert!(wait_until(|| !p.is_playing()), "stops at the end");
    let loud = stats.loud_frames.load(Ordering::Relaxed);
    assert!(
        (3900..=4000).contains(&loud),
        "played the clip once: {loud} loud frames"
    );
    assert!(p.error().is_none());
}

/// Paused playback renders silence and keeps its position; seeking moves it.
#[test]
fn pause_keeps_position_and_seek_moves_it() {
    let out = MockOutput {
        realtime: true,
        ..MockOutput::default()
    };
    let p = Player::spawn(out).unwrap();
    p.load(8000, tone(80_000));
    p.play();
    assert!(wait_until(|| p.position_fraction() > 0.01));
    p.pause();
    std::thread::sleep(Duration::from_millis(50));
    let at = p.position_fraction();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(p.position_fraction(), at, "paused position is still");
    p.seek_fraction(0.5);
    assert!(
        wait_until(|| (p.position_fraction() - 0.5).abs() < 0.01),
        "seek lands at half"
    );
}

/// Looping wraps the position instead of stopping.
#[test]
fn looping_wraps() {
    let p = Player::spawn(MockOutput::default()).unwrap();
    p.set_looping(true);
    p.load(8000, tone(2000));
    p.play();
    let frames = &p.shared().position_frames;
    let mut wrapped = false;
    let mut last = 0;
    wait_until(|| {
        let now = frames.load(Ordering::Relaxed);
        wrapped |= now < last;
        last = now;
        wrapped
    });
    assert!(
        wrapped && p.is_playing(),
        "position wrapped while still playing"
    );
}

/// With no device the player says so in one line and does not block the UI.
#[test]
fn no_device_is_reported() {
    let p = Player::spawn(NoDevice).unwrap();
    assert!(wait_until(|| p.error().is_some()));
    assert!(p.error().unwrap().starts_with("no audio device"));
    p.load(8000, tone(10));
    p.play();
}

/// Resampling keeps the duration and the endpoints.
#[test]
fn resample_keeps_duration() {
    let x: Vec<f32> = (0..441).map(|i| i as f32).collect();
    let y = resample(&x, 44_100, 48_000);
    assert_eq!(y.len(), 480);
    assert_eq!(y[0], 0.0);
    assert!((y[479] - 440.0).abs() < 1.0);
}

/// A seek sent right after a load (clicking the waveform of a clip not playing yet loads it and
/// seeks in one frame) lands in the new clip, however late the manager thread gets to the load.
#[test]
fn seek_right_after_load_lands_in_the_new_clip() {
    for _ in 0..20 {
        let p = Player::spawn(MockOutput::default()).unwrap();
        p.load(8000, tone(8000));
        p.seek_fraction(0.5);
        assert!(
            wait_until(|| (0.45..0.55).contains(&p.position_fraction())),
            "seek after load: at {}",
            p.position_fraction()
        );
    }
}
