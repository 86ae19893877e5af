package failsmall.codex.collections_bounded_test

import data.failsmall.codex.collections_bounded as rule

unit(collections) := {"name": "bot-features", "collections": collections}

test_a_list_with_max_entries_passes if {
	count(rule.violations) == 0 with input as {"unit": unit([{"pointer": "/features", "max_entries": 200, "max_items": null}])}
}

test_a_list_with_max_items_passes if {
	count(rule.violations) == 0 with input as {"unit": unit([{"pointer": "/features", "max_entries": null, "max_items": 200}])}
}

test_an_unbounded_list_is_denied if {
	count(rule.violations) == 1 with input as {"unit": unit([
		{"pointer": "/features", "max_entries": 200, "max_items": null},
		{"pointer": "/rules", "max_entries": null, "max_items": null},
	])}
}

test_no_unit_no_finding if {
	count(rule.violations) == 0 with input as {"unit": null}
}
