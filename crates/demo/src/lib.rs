//! failsmall-demo: a consumer that reads two units the way real proxies did, and a bounded load
//! generator to drive it.
//!
//! - [`features`]: the bot-detection feature file (`bot-features`) with a hard limit of
//!   [`features::FEATURES_MAX`] features. Mode [`Mode::Naive`] reads the file itself and, like
//!   the 18 Nov proxy, fails every request once a file over the limit is loaded; mode
//!   [`Mode::Safe`] reads it through `failsmall-client`, rejects it, reports the rejection and
//!   keeps serving the last good file.
//! - [`rules`]: the rules file (`rules`) with killswitches. [`Generation::Fl1`] mishandles a
//!   killswitched rule whose action is `execute` (every request fails with the 5 Dec Lua error);
//!   [`Generation::Fl2`] handles it.
//! - [`consumer`]: the HTTP service (`GET /`, `/health`, `/metrics`, `/state`).
//! - [`loadgen`]: a load generator with bounded rate, concurrency, total requests and time.
//! - [`webhook`]: a webhook receiver that records the control plane's notifications.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod features;
pub mod loadgen;
pub mod metrics;
pub mod reject;
pub mod rules;
pub mod webhook;

pub use consumer::{ConsumerConfig, ConsumerError, Generation, Mode};
pub use loadgen::{LoadConfig, LoadError, LoadReport};
