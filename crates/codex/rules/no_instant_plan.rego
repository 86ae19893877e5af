# Today's practice, and both incidents: every node at once. Only break glass may do that,
# and break glass is approved, expires and alerts (it does not exist yet, so nothing may).
package failsmall.codex.no_instant_plan

rule := {
	"id": "no-instant-plan",
	"severity": "deny",
	"sentence": "If you need a change everywhere now, use break glass; otherwise use a plan whose first stage takes part of the fleet.",
	"link": "docs/codex/no-instant-plan.md",
}

instant if {
	first := input.plan.stages[0]
	count(first.select) == 0
	first.percent >= 100
}

instant if {
	input.analysis.fleet_nodes > 1
	input.analysis.stages[0].nodes_exposed_fraction >= 1
}

violations contains v if {
	is_object(input.plan)
	instant
	not input.request.break_glass
	v := {
		"message": sprintf("plan %q: its first stage %q takes every node at once", [input.plan.name, input.plan.stages[0].name]),
		"field": "stages[0]",
		"subject": "plan",
	}
}
