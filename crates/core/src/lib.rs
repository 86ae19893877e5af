//! failsmall-core: the words of failsmall as types, plan files, gate expressions, and the
//! rollout engine.
//!
//! Architecture invariant: nothing in this crate performs IO, reads a clock, or draws a random
//! number. Time arrives as `now_ms` arguments; files arrive as `&str`. The server, the agent,
//! the simulator and the tests all drive the same [`engine::Engine`].
#![forbid(unsafe_code)]

pub mod break_glass;
pub mod domain;
pub mod duration;
pub mod engine;
pub mod flags;
pub mod freeze;
pub mod gate;
pub mod health;
pub mod limits;
pub mod plan;
pub mod select;
pub mod slo;
pub mod stats;
pub mod trust;
pub mod validate;
pub mod yaml;
