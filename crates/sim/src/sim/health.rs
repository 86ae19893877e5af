//! The health round (what every node's agent reports each interval) and the server's
//! burn-rate feed, as the simulated fleet and control plane do them.

use super::*;

impl Run<'_> {
    /// One health interval on every node. The real agent scrapes its consumer's metrics once
    /// and reports that one sample for every unit with an active version
    /// (`crates/agent/src/health.rs`), so the errors and latency of every version a node runs,
    /// whatever its unit, and of any fleet-wide incident show in the health of each unit.
    pub(super) fn on_health_round(&mut self) -> Result<(), SimError> {
        let now_ms = self.now_ms;
        let send = matches!(self.strategy, Strategy::Plan { .. }) && self.rollout_running();
        if send && self.health_relevant_dirty {
            self.recompute_health_relevant();
        }
        let incidents: Vec<&Incident> = self
            .scenario
            .incidents
            .iter()
            .filter(|incident| incident.from_ms <= now_ms && now_ms < incident.until_ms)
            .collect();
        let unit_count = self.units.len();
        let mut requests_total = 0u64;
        let mut errors_total = 0u64;
        let mut failed_total = 0u64;
        let mut crashes_due: Vec<(usize, u32)> = Vec::new();
        let mut nodes_failing = 0u64;
        for index in 0..self.nodes {
            let (Some(&mean), Some(&(lambda, exp_neg)), Some(&base_latency_ms), Some(node)) = (
                self.mean_requests.get(index),
                self.background_errors.get(index),
                self.fleet.latency_ms.get(index),
                self.fleet.nodes.get(index),
            ) else {
                continue;
            };
            if self.is_dead(index) {
                continue;
            }
            // What the versions this node runs do to its requests.
            let mut hurt = false;
            let mut down = false;
            let mut ok_q = 1.0f64;
            let mut latency_add_ms = 0.0f64;
            for unit in 0..unit_count {
                let pair = unit.saturating_mul(self.nodes).saturating_add(index);
                let (Some(&slot), Some(&hurt_from_ms)) =
                    (self.running.get(pair), self.hurt_from_ms.get(pair))
                else {
                    continue;
                };
                if now_ms < hurt_from_ms {
                    continue;
                }
                let Some(info) = self.slots.get(slot as usize) else {
                    continue;
                };
                hurt = true;
                down |= info.effect.crash;
                ok_q *= 1.0 - info.extra_error_q;
                latency_add_ms += info.latency_add_ms;
            }
            // The SLOs each unit's health counts in on this node (per unit, as the server
            // looks them up per report).
            let slo_cover: Vec<Vec<usize>> = if self.slos.is_empty() {
                Vec::new()
            } else {
                self.units
                    .iter()
                    .map(|unit| self.slos.covering(unit, &node.labels))
                    .collect()
            };
            let mut incident_ok_q = 1.0f64;
            let mut latency_x = 1.0f64;
            for incident in &incidents {
                if incident.applies_to(&node.labels) {
                    incident_ok_q *= 1.0 - incident.error_rate;
                    latency_x *= incident.latency_x;
                }
            }
            let requests = if mean < REQUESTS_POISSON_BELOW {
                poisson_capped(&mut self.rng, mean, u64::MAX)
            } else {
                let z: f64 = self.rng.sample(StandardNormal);
                round_count(mean + mean.sqrt() * z)
            };
            // Errors of Poisson traffic thinned by the error rate are Poisson with the thinned
            // mean, so the per-node `exp(-mean)` can be computed once.
            let background_errors = poisson_known(&mut self.rng, lambda, exp_neg, requests);
            nodes_failing += u64::from(hurt);
            if hurt && let Some(flag) = self.ever_failed.get_mut(index) {
                *flag = true;
            }
            let failed = if hurt {
                binomial_approx(&mut self.rng, requests - background_errors, 1.0 - ok_q)
            } else {
                0
            };
            let incident_errors = if incident_ok_q < 1.0 {
                binomial_approx(
                    &mut self.rng,
                    requests - background_errors - failed,
                    1.0 - incident_ok_q,
                )
            } else {
                0
            };
            let errors = background_errors + failed + incident_errors;
            requests_total += requests;
            errors_total += errors;
            failed_total += failed;
            // A crashed consumer answers no metrics scrape: the agent sends no health for the
            // node (so silence can fire) and reports the crash within this interval, for every
            // unit whose active version is on trial.
            if down {
                for unit in 0..unit_count {
                    let pair = unit.saturating_mul(self.nodes).saturating_add(index);
                    if !self.crash_reported.get(pair).copied().unwrap_or(true) {
                        crashes_due.push((index, u32::try_from(unit).unwrap_or(u32::MAX)));
                    }
                }
                continue;
            }
            let median_ms = base_latency_ms * latency_x + latency_add_ms;
            if let (Some(cached), Some(shape)) = (
                self.latency_median_ms.get_mut(index),
                self.latency_shape.get_mut(index),
            ) && cached.to_bits() != median_ms.to_bits()
            {
                *cached = median_ms;
                *shape = LatencyShape::around(median_ms);
            }
            let Some(shape) = self.latency_shape.get(index).copied() else {
                continue;
            };
            let monitored = self.plan.health_source.is_some();
            for unit in 0..unit_count {
                let pair = unit.saturating_mul(self.nodes).saturating_add(index);
                let has_version = self
                    .running
                    .get(pair)
                    .and_then(|slot| self.slots.get(*slot as usize))
                    .is_some_and(|info| info.hash.is_some());
                if let Some(Event::Health { sample, .. }) = self.health_events.get_mut(pair) {
                    sample.requests = requests;
                    sample.errors = errors;
                    shape.fill(&mut sample.latency, requests);
                }
                // The agent sends this sample whatever the engine needs: it counts in the SLOs.
                if has_version && let Some(cover) = slo_cover.get(unit) {
                    for slo in cover {
                        self.slos.record(*slo, requests, errors, now_ms);
                    }
                }
                let relevant =
                    !self.health_filter || self.health_relevant.get(pair).copied().unwrap_or(false);
                if send
                    && relevant
                    && has_version
                    && let Some(event) = self.health_events.get(pair)
                {
                    // A plan whose health comes from a monitoring system reads the same
                    // consumer counters through it: the engine counts only those.
                    let through_monitoring;
                    let event = match event {
                        Event::Health {
                            node,
                            unit,
                            version,
                            sample,
                        } if monitored => {
                            through_monitoring = Event::MonitoredHealth {
                                node: node.clone(),
                                unit: unit.clone(),
                                version: *version,
                                sample: *sample,
                                // The simulator evaluates no PromQL: a plan's custom
                                // metrics have no reading here, so gates on them hold,
                                // as they do when the real source answers nothing.
                                custom: Default::default(),
                            };
                            &through_monitoring
                        }
                        other => other,
                    };
                    let actions = self
                        .engine
                        .step(now_ms, event)
                        .map_err(|error| engine_error("Health", now_ms, &error))?;
                    if !actions.is_empty() {
                        self.carry_out(actions);
                    }
                }
            }
        }
        for (index, unit) in crashes_due {
            self.report_crash(index, unit)?;
        }
        let failing_share = nodes_failing as f64 / self.fleet.nodes.len().max(1) as f64;
        if failing_share > self.metrics.nodes_failing_max_fraction {
            self.metrics.nodes_failing_max_fraction = failing_share;
        }
        self.metrics.requests_total += requests_total;
        self.metrics.requests_errors += errors_total;
        self.metrics.requests_failed += failed_total;
        if self.timeline.len() < TIMELINE_MAX_POINTS {
            self.timeline.push(TimelinePoint {
                at_ms: now_ms,
                error_rate: if requests_total > 0 {
                    errors_total as f64 / requests_total as f64
                } else {
                    0.0
                },
                nodes_bad_fraction: self.nodes_on_bad as f64 / self.fleet.nodes.len().max(1) as f64,
            });
        }
        let nodes_on_bad = self.nodes_on_bad;
        self.log("-", || {
            format!(
                "health requests={requests_total} errors={errors_total} nodes_on_bad={nodes_on_bad}"
            )
        });
        self.tick()?;
        let next_ms = now_ms.saturating_add(self.scenario.health_interval_ms);
        if next_ms <= self.scenario.duration_ms {
            self.schedule(next_ms, SimEvent::HealthRound);
        }
        Ok(())
    }

    /// The server's burn-rate feed: the units whose running rollouts have burn-rate gates get
    /// the service's burn rates from the SLOs (`crates/server/src/slo.rs`,
    /// `feed_burn_rates_forever`), every [`BURN_FEED_INTERVAL_MS`].
    pub(super) fn on_burn_feed(&mut self) -> Result<(), SimError> {
        let now_ms = self.now_ms;
        for unit in self.engine.units_reading_burn_rates() {
            let burn_rates = self.slos.burn_rates(&unit, now_ms);
            let event = Event::BurnRates { unit, burn_rates };
            let actions = self
                .engine
                .step(now_ms, &event)
                .map_err(|error| engine_error("BurnRates", now_ms, &error))?;
            if !actions.is_empty() {
                self.carry_out(actions);
            }
        }
        let next_ms = now_ms.saturating_add(BURN_FEED_INTERVAL_MS);
        if next_ms <= self.scenario.duration_ms {
            self.schedule(next_ms, SimEvent::BurnFeed);
        }
        Ok(())
    }
}
