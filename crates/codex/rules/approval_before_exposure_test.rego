package failsmall.codex.approval_before_exposure_test

import data.failsmall.codex.approval_before_exposure as rule

plan := {"name": "p", "stages": [{"name": "canary", "approval": false}, {"name": "enterprise", "approval": true}]}

test_an_approval_stage_first_to_select_its_nodes_passes if {
	count(rule.violations) == 0 with input as {"plan": plan, "analysis": {"stages": [{"nodes_selected": 5, "nodes_added": 5}, {"nodes_selected": 10, "nodes_added": 10}]}}
}

test_nodes_exposed_before_the_approval_warn if {
	count(rule.violations) == 1 with input as {"plan": plan, "analysis": {"stages": [{"nodes_selected": 5, "nodes_added": 5}, {"nodes_selected": 10, "nodes_added": 7}]}}
}
