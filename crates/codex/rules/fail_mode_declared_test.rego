package failsmall.codex.fail_mode_declared_test

import data.failsmall.codex.fail_mode_declared as rule

test_closed_declared_passes if {
	count(rule.violations) == 0 with input as {"unit": {"name": "rules", "declared": ["format", "max_bytes", "fail_mode"], "spec": {"fail_mode": "closed"}}}
}

test_open_with_safe_default_passes if {
	count(rule.violations) == 0 with input as {"unit": {"name": "f", "declared": ["fail_mode", "safe_default"], "spec": {"fail_mode": "open", "safe_default": "{}"}}}
}

test_undeclared_is_denied if {
	count(rule.violations) == 1 with input as {"unit": {"name": "rules", "declared": ["format", "max_bytes"], "spec": {"fail_mode": "closed"}}}
}

test_open_without_safe_default_is_denied if {
	count(rule.violations) == 1 with input as {"unit": {"name": "f", "declared": ["fail_mode"], "spec": {"fail_mode": "open"}}}
}
