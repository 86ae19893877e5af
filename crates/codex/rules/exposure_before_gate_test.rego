package failsmall.codex.exposure_before_gate_test

import data.failsmall.codex.exposure_before_gate as rule

config := {"exposure_max_fraction": 0.05}

analysis(nodes, node_fraction, traffic_fraction) := {
	"first_gated_stage": 0,
	"stages": [{"stage": "employees"}],
	"exposed_nodes_before_gate": nodes,
	"exposed_nodes_before_gate_fraction": node_fraction,
	"exposed_traffic_before_gate_fraction": traffic_fraction,
}

test_two_percent_passes if {
	count(rule.violations) == 0 with input as {"config": config, "analysis": analysis(3, 0.02, 0.01)}
}

test_one_node_of_a_small_fleet_passes if {
	count(rule.violations) == 0 with input as {"config": config, "analysis": analysis(1, 0.2, 0.2)}
}

test_one_node_of_each_build_of_a_small_fleet_passes if {
	a := object.union(analysis(2, 0.5, 0.5), {"fleet_label_values": {"generation": ["fl1", "fl2"]}})
	count(rule.violations) == 0 with input as {"config": object.union(config, {"build_labels": ["generation"]}), "analysis": a}
}

test_more_than_one_node_of_each_build_is_denied if {
	a := object.union(analysis(3, 0.75, 0.75), {"fleet_label_values": {"generation": ["fl1", "fl2"]}})
	count(rule.violations) == 2 with input as {"config": object.union(config, {"build_labels": ["generation"]}), "analysis": a}
}

test_ten_percent_of_nodes_is_denied if {
	count(rule.violations) == 1 with input as {"config": config, "analysis": analysis(12, 0.1, 0.04)}
}

test_nodes_and_traffic_both_over_are_two_findings if {
	count(rule.violations) == 2 with input as {"config": config, "analysis": analysis(12, 0.1, 0.3)}
}
