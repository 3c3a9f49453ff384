//! The engine's own seeded noise: reproduces torch's CPU `randn` bit for bit.
