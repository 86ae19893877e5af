# Fail small: a consumer keeps its last known good (fail stale); with none at all it must
# fail open or closed, and that choice belongs to the unit's owner, written down, not to a
# default nobody chose. Open needs something safe to serve.
package failsmall.codex.fail_mode_declared

rule := {
	"id": "fail-mode-declared",
	"severity": "deny",
	"sentence": "If you need consumers to behave predictably without a valid version, use an explicit fail_mode, and with open a safe_default.",
	"link": "docs/codex/fail-mode-declared.md",
}

violations contains v if {
	is_object(input.unit)
	not "fail_mode" in input.unit.declared
	v := {
		"message": sprintf("unit %q declares no fail_mode (it would be closed by default, a choice nobody made)", [input.unit.name]),
		"field": "fail_mode",
		"subject": "unit",
	}
}

violations contains v if {
	is_object(input.unit)
	input.unit.spec.fail_mode == "open"
	not is_string(input.unit.spec.safe_default)
	v := {
		"message": sprintf("unit %q fails open but declares no safe_default to serve", [input.unit.name]),
		"field": "safe_default",
		"subject": "unit",
	}
}
