"""Evaluates flags through the real OpenFeature Python SDK and its OFREP provider.

Usage: evaluate.py BASE_URL < evaluations.json

Each evaluation is {"type": "boolean"|"string"|"integer"|"float"|"object", "key": KEY,
"default": VALUE, "targeting_key": KEY or null, "attributes": {...}}. Prints one JSON list:
per evaluation, the SDK's details (value, variant, reason, error_code, error_message,
flag_metadata).
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def name(value):
    if value is None:
        return None
    return getattr(value, "value", value)


def main():
    base_url = sys.argv[1]
    evaluations = json.load(sys.stdin)
    api.set_provider(OFREPProvider(base_url, timeout=10.0))
    client = api.get_client()
    methods = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }
    results = []
    for evaluation in evaluations:
        context = EvaluationContext(
            evaluation.get("targeting_key"), evaluation.get("attributes", {})
        )
        details = methods[evaluation["type"]](
            evaluation["key"], evaluation["default"], context
        )
        results.append(
            {
                "key": evaluation["key"],
                "value": details.value,
                "variant": details.variant,
                "reason": name(details.reason),
                "error_code": name(details.error_code),
                "error_message": details.error_message,
                "flag_metadata": dict(details.flag_metadata or {}),
            }
        )
    api.shutdown()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
