# Both incidents reached every server because nothing watched the change's health. A stage
# without a gate can only be stopped by a person; hard signals alone (NACKs, crashes) miss a
# rise in 5xx like the 5 Dec one.
package failsmall.codex.plan_has_gates

rule := {
	"id": "plan-has-gates",
	"severity": "deny",
	"sentence": "If you need to roll out a change, use a plan with at least one stage whose gates judge the canary's health (error rate, latency).",
	"link": "docs/codex/plan-has-gates.md",
}

health_gated if {
	some stage in input.plan.stages
	count(stage.gates) > 0
}

violations contains v if {
	is_object(input.plan)
	not health_gated
	v := {
		"message": sprintf("plan %q has no stage with a gate: no health regression can stop it or roll it back", [input.plan.name]),
		"field": "stages",
		"subject": "plan",
	}
}
