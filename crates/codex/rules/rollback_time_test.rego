package failsmall.codex.rollback_time_test

import data.failsmall.codex.rollback_time as rule

config := {"rollback_max_ms": 600000}

analysis(worst_ms) := {"first_gated_stage": 0, "stages": [{"stage": "employees"}], "rollback_worst_ms": worst_ms}

test_five_minutes_passes if {
	count(rule.violations) == 0 with input as {"config": config, "analysis": analysis(320000)}
}

test_twenty_minutes_is_denied if {
	count(rule.violations) == 1 with input as {"config": config, "analysis": analysis(1220000)}
}

test_never_is_another_rules_business if {
	count(rule.violations) == 0 with input as {"config": config, "analysis": {"first_gated_stage": null, "stages": [], "rollback_worst_ms": null}}
}
