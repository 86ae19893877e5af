package failsmall.codex.no_instant_plan_test

import data.failsmall.codex.no_instant_plan as rule

test_a_canary_first_passes if {
	count(rule.violations) == 0 with input as {"plan": {"name": "p", "stages": [{"name": "canary", "select": {"cohort": ["employee"]}, "percent": 100}, {"name": "all", "select": {}, "percent": 100}]}}
}

test_everything_at_once_is_denied if {
	count(rule.violations) == 1 with input as {"plan": {"name": "instant", "stages": [{"name": "everywhere", "select": {}, "percent": 100}]}}
}

test_every_cohort_listed_is_still_everything if {
	count(rule.violations) == 1 with input as {
		"plan": {"name": "p", "stages": [{"name": "all", "select": {"cohort": ["a", "b"]}, "percent": 100}]},
		"analysis": {"fleet_nodes": 10, "stages": [{"nodes_exposed_fraction": 1}]},
	}
}

test_break_glass_may if {
	count(rule.violations) == 0 with input as {"plan": {"name": "instant", "stages": [{"name": "everywhere", "select": {}, "percent": 100}]}, "request": {"break_glass": true}}
}
