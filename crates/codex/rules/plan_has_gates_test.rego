package failsmall.codex.plan_has_gates_test

import data.failsmall.codex.plan_has_gates as rule

test_a_gated_stage_passes if {
	count(rule.violations) == 0 with input as {"plan": {"name": "p", "stages": [{"gates": []}, {"gates": ["error_rate > 0.5%"]}]}}
}

test_no_gate_anywhere_is_denied if {
	count(rule.violations) == 1 with input as {"plan": {"name": "p", "stages": [{"gates": [], "gated": true}]}}
}

test_no_plan_no_finding if {
	count(rule.violations) == 0 with input as {"plan": null}
}
