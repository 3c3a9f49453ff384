//! `headroom`: with no arguments opens the desktop app; subcommands are the headless CLI.

fn main() {
    println!("headroom {}", headroom_engine::VERSION);
}
