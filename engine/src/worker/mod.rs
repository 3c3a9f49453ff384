//! The background engine thread: commands in, events out (see [`protocol`]).

pub mod protocol;
