//! Statistical tests behind gates.
