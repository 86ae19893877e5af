# Seed 004: from the first node running a bad change to the last node back on the previous
# one, at most 10 minutes, in the worst case the plan allows.
package failsmall.codex.rollback_time

rule := {
	"id": "rollback-time",
	"severity": "deny",
	"sentence": "If you need a bad change undone fast, use a first gated stage whose timeout keeps the worst-case time to full rollback within 10 minutes.",
	"link": "docs/codex/rollback-time.md",
}

violations contains v if {
	a := input.analysis
	is_object(a)
	is_number(a.rollback_worst_ms)
	a.rollback_worst_ms > input.config.rollback_max_ms
	index := a.first_gated_stage
	v := {
		"message": sprintf(
			"a bad version caught at stage %q may take up to %vs to roll back everywhere (its timeout or bake, plus propagation and a health interval); the limit is %vs",
			[a.stages[index].stage, a.rollback_worst_ms / 1000, input.config.rollback_max_ms / 1000],
		),
		"field": sprintf("stages[%d].timeout", [index]),
		"subject": "plan",
	}
}
