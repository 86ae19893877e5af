package failsmall.codex.first_gate_covers_builds_test

import data.failsmall.codex.first_gate_covers_builds as rule

analysis(selected) := {
	"first_gated_stage": 0,
	"fleet_label_values": {"generation": ["fl1", "fl2"], "cohort": ["employee", "free"]},
	"stages": [{"stage": "employees", "label_values_selected": selected}],
}

config := {"build_labels": ["generation"]}

test_a_first_stage_with_every_generation_passes if {
	count(rule.violations) == 0 with input as {"config": config, "analysis": analysis({"generation": ["fl1", "fl2"]})}
}

test_a_first_stage_with_one_generation_is_denied if {
	count(rule.violations) == 1 with input as {"config": config, "analysis": analysis({"generation": ["fl2"]})}
}

test_a_fleet_of_one_generation_needs_nothing if {
	count(rule.violations) == 0 with input as {
		"config": config,
		"analysis": {
			"first_gated_stage": 0,
			"fleet_label_values": {"generation": ["fl2"]},
			"stages": [{"stage": "employees", "label_values_selected": {"generation": ["fl2"]}}],
		},
	}
}

test_no_gated_stage_is_another_rules_business if {
	count(rule.violations) == 0 with input as {"config": config, "analysis": {"first_gated_stage": null, "fleet_label_values": {"generation": ["fl1", "fl2"]}, "stages": []}}
}
