//! Public handlers: health, metrics, the signing key.

use super::*;

pub(super) async fn healthz(
    State(state): State<AppState>,
) -> Result<axum::Json<failsmall_wire::Health>, ApiError> {
    let schema_version = db(&state, |store| Ok(store.schema_version()?)).await?;
    Ok(axum::Json(failsmall_wire::Health {
        status: "ok".to_owned(),
        schema_version,
    }))
}

pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = db(&state, |store| Ok(store.counts()?)).await?;
    let counters = &state.shared.counters;
    let mut text = String::new();
    text.push_str("# HELP failsmall_http_responses_total HTTP responses by status class.\n");
    text.push_str("# TYPE failsmall_http_responses_total counter\n");
    for (index, counter) in counters.responses_by_class.iter().enumerate() {
        let class = index.saturating_add(1);
        text.push_str(&format!(
            "failsmall_http_responses_total{{class=\"{class}xx\"}} {}\n",
            counter.load(Ordering::Relaxed)
        ));
    }
    let reports = state.shared.reports.counts();
    let gauges: [(&str, &str, &str, u64); 14] = [
        (
            "failsmall_report_requests_total",
            "counter",
            "Agents' report requests answered by the group commit.",
            reports.requests.load(Ordering::Relaxed),
        ),
        (
            "failsmall_report_steps_total",
            "counter",
            "Engine steps that applied report requests (a group, or one request on its own).",
            reports.steps.load(Ordering::Relaxed),
        ),
        (
            "failsmall_report_groups_split_total",
            "counter",
            "Groups of report requests the engine refused whole, then applied one by one.",
            reports.groups_split.load(Ordering::Relaxed),
        ),
        (
            "failsmall_report_requests_busy_total",
            "counter",
            "Report requests answered 503 because the queue was full.",
            reports.busy.load(Ordering::Relaxed),
        ),
        (
            "failsmall_versions_rejected_total",
            "counter",
            "Pushes refused by validation.",
            counters.versions_rejected.load(Ordering::Relaxed),
        ),
        (
            "failsmall_validation_skipped_total",
            "counter",
            "Pushes stored with validation skipped by an admin.",
            counters.validation_skipped.load(Ordering::Relaxed),
        ),
        (
            "failsmall_break_glass_reports_total",
            "counter",
            "Break-glass uses reported by agents (alert on any rise).",
            counters.break_glass_reports.load(Ordering::Relaxed),
        ),
        (
            "failsmall_requests_denied_total",
            "counter",
            "Requests refused by access control.",
            counters.denied.load(Ordering::Relaxed),
        ),
        ("failsmall_units", "gauge", "Units defined.", counts.units),
        (
            "failsmall_versions",
            "gauge",
            "Versions stored.",
            counts.versions,
        ),
        (
            "failsmall_nodes",
            "gauge",
            "Nodes registered.",
            counts.nodes,
        ),
        (
            "failsmall_nodes_stale",
            "gauge",
            "Nodes that reported serving stale configuration (their desired state expired) and not yet fresh again.",
            counts.nodes_stale,
        ),
        (
            "failsmall_blob_bytes",
            "gauge",
            "Bytes of stored blobs.",
            counts.blob_bytes,
        ),
        (
            "failsmall_changelog_entries",
            "gauge",
            "Changelog entries.",
            counts.changelog_entries,
        ),
    ];
    for (name, kind, help, value) in gauges {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    let (revision, by_status) = state
        .shared
        .engine
        .read(|engine, revision| {
            let mut by_status = [0u64; RolloutStatus::ALL.len()];
            for status in engine.rollout_statuses() {
                if let Some(index) = RolloutStatus::ALL.iter().position(|s| *s == status)
                    && let Some(count) = by_status.get_mut(index)
                {
                    *count = count.saturating_add(1);
                }
            }
            (revision, by_status)
        })
        .await;
    text.push_str(
        "# HELP failsmall_rollouts Rollouts the engine keeps, by status (ended ones are pruned, oldest first).\n",
    );
    text.push_str("# TYPE failsmall_rollouts gauge\n");
    for (status, count) in RolloutStatus::ALL.iter().zip(by_status) {
        text.push_str(&format!(
            "failsmall_rollouts{{status=\"{}\"}} {count}\n",
            status.as_str()
        ));
    }
    text.push_str(
        "# HELP failsmall_rollouts_ended_total Rollouts ended since the data dir was created, by how (from the changelog).\n",
    );
    text.push_str("# TYPE failsmall_rollouts_ended_total counter\n");
    for (outcome, count) in ROLLOUT_END_KINDS.iter().zip(counts.rollouts_ended) {
        text.push_str(&format!(
            "failsmall_rollouts_ended_total{{outcome=\"{outcome}\"}} {count}\n"
        ));
    }
    text.push_str("# HELP failsmall_engine_revision Engine steps persisted.\n");
    text.push_str(&format!(
        "# TYPE failsmall_engine_revision counter\nfailsmall_engine_revision {revision}\n"
    ));
    text.push_str(&slos::metrics_text(&state));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

pub(super) async fn signing_key(
    State(state): State<AppState>,
) -> axum::Json<failsmall_wire::SigningKey> {
    axum::Json(failsmall_wire::SigningKey {
        algorithm: "ed25519".to_owned(),
        public_key: state.shared.signer.public_key_hex(),
    })
}
