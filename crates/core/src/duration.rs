//! Durations with units: `500ms`, `30s`, `5m`, `1h`.
