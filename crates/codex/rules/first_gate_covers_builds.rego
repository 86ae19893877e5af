# 5 Dec 2025: a killswitch broke one proxy generation (28% of traffic) and not the other. A
# first stage that held only the unaffected generation would have passed it everywhere.
package failsmall.codex.first_gate_covers_builds

rule := {
	"id": "first-gate-covers-builds",
	"severity": "deny",
	"sentence": "If you need to change what every consumer build reads, use a first gated stage that holds nodes of every build (each value of labels such as generation).",
	"link": "docs/codex/first-gate-covers-builds.md",
}

violations contains v if {
	index := input.analysis.first_gated_stage
	is_number(index)
	stage := input.analysis.stages[index]
	some label in input.config.build_labels
	fleet_values := object.get(input.analysis.fleet_label_values, label, [])
	count(fleet_values) > 1
	selected := object.get(stage.label_values_selected, label, [])
	missing := [value | some value in fleet_values; not value in selected]
	count(missing) > 0
	v := {
		"message": sprintf(
			"stage %q, the first that can fail, holds no node of %s %s (the fleet runs %s): a change that breaks only that build passes it and reaches every such node",
			[stage.stage, label, concat(", ", missing), concat(", ", fleet_values)],
		),
		"field": sprintf("stages[%d].select", [index]),
		"subject": "plan",
	}
}
