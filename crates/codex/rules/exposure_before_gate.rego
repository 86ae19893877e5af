# Seed 004: a bad change may reach at most 5% of the fleet before something can stop it.
package failsmall.codex.exposure_before_gate

rule := {
	"id": "exposure-before-gate",
	"severity": "deny",
	"sentence": "If you need to reach the whole fleet, use a first gated stage that exposes at most 5% of nodes and of traffic (one node of each consumer build on a fleet too small for that).",
	"link": "docs/codex/exposure-before-gate.md",
}

percent(fraction) := round(fraction * 10000) / 100

stage_index := input.analysis.first_gated_stage if {
	is_number(input.analysis.first_gated_stage)
} else := count(input.analysis.stages) - 1

# The least exposure any plan can have: one node, or one node of each consumer build when the
# fleet runs several (first-gate-covers-builds asks the first gate to hold every build).
build_counts contains n if {
	some label in object.get(input.config, "build_labels", [])
	n := count(object.get(object.get(input.analysis, "fleet_label_values", {}), label, []))
}

least_exposure := max(build_counts | {1})

violations contains v if {
	a := input.analysis
	is_object(a)
	a.exposed_nodes_before_gate > least_exposure
	some measure in ["nodes", "traffic"]
	fraction := object.get(a, sprintf("exposed_%s_before_gate_fraction", [measure]), 0)
	fraction > input.config.exposure_max_fraction
	v := {
		"message": sprintf(
			"%v%% of %s is exposed before the first gate can fail (%d nodes); the limit is %v%%",
			[percent(fraction), measure, a.exposed_nodes_before_gate, percent(input.config.exposure_max_fraction)],
		),
		"field": sprintf("stages[%d]", [stage_index]),
		"subject": "plan",
	}
}
