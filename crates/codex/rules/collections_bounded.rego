# 18 Nov 2025: a generated feature file doubled past the 200 entries its consumer preallocated.
# Nothing between the generator and the fleet knew the limit.
package failsmall.codex.collections_bounded

rule := {
	"id": "collections-bounded",
	"severity": "deny",
	"sentence": "If you need a file that a program generates, use max_entries on each of its lists (and max_bytes), set to the limits its consumers preallocate.",
	"link": "docs/codex/collections-bounded.md",
}

violations contains v if {
	is_object(input.unit)
	some collection in input.unit.collections
	collection.max_entries == null
	collection.max_items == null
	shown := object.get({"": "the document itself"}, collection.pointer, collection.pointer)
	v := {
		"message": sprintf(
			"unit %q: the list at %s has no max_entries (nor maxItems in its schema): a generated file can grow past what its consumers can hold",
			[input.unit.name, shown],
		),
		"field": "max_entries",
		"subject": "unit",
	}
}
