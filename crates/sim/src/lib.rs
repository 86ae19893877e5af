//! failsmall-sim: a discrete-event fleet simulator in virtual time that drives the real engine.
#![forbid(unsafe_code)]
