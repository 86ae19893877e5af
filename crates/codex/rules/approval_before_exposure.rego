# An approval stage exists so that a person decides before its nodes get the change. The
# engine asks for the approval when the stage has passed; nodes the stage selects that an
# earlier stage already exposed got the change before anyone decided.
package failsmall.codex.approval_before_exposure

rule := {
	"id": "approval-before-exposure",
	"severity": "warn",
	"sentence": "If you need a person to approve before some nodes get a change, use an approval stage that is the first to select those nodes.",
	"link": "docs/codex/approval-before-exposure.md",
}

violations contains v if {
	is_object(input.plan)
	some index, stage in input.plan.stages
	stage.approval
	check := input.analysis.stages[index]
	early := check.nodes_selected - check.nodes_added
	early > 0
	v := {
		"message": sprintf(
			"stage %q asks for an approval, but %d of the %d nodes it selects were already exposed by earlier stages, before anyone approved",
			[stage.name, early, check.nodes_selected],
		),
		"field": sprintf("stages[%d].approval", [index]),
		"subject": "plan",
	}
}
