"""JSON Schema of ``results.json`` (the results contract in DESIGN.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["RESULTS_SCHEMA", "validate_results"]

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_METRICS = {
    "type": "object",
    "properties": {
        "auc": _NUMBER_OR_NULL,
        "auc_ci": {"type": "array", "items": _NUMBER_OR_NULL, "minItems": 2, "maxItems": 2},
        "accuracy": _NUMBER_OR_NULL,
        "loss": _NUMBER_OR_NULL,
        # segmentation models: mean per-image foreground Dice / IoU of the predicted masks
        "dice": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "iou": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "n": {"type": "integer", "minimum": 0},
    },
    "required": ["auc", "accuracy", "n"],
}
_SITE_METRICS = {"type": "object", "additionalProperties": _METRICS}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["scenario", "task", "seed", "runs"],
    "properties": {
        "scenario": {"type": "string"},
        "task": {"type": "object", "required": ["name", "model", "modalities", "classes"]},
        "seed": {"type": "integer"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["method", "rounds", "final", "wall_seconds"],
                "properties": {
                    "method": {"type": "string"},
                    "rounds": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["round", "global", "sites"],
                            "properties": {
                                "round": {"type": "integer", "minimum": 1},
                                "global": _METRICS,
                                "sites": _SITE_METRICS,
                            },
                        },
                    },
                    "final": {
                        "type": "object",
                        "required": ["global", "sites"],
                        "properties": {"global": _METRICS, "sites": _SITE_METRICS},
                    },
                    "epsilon": {"type": "object", "additionalProperties": {"type": "number"}},
                    "wall_seconds": {"type": "number", "minimum": 0},
                },
            },
        },
    },
}


def validate_results(results: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``results`` breaks the results contract."""
    import jsonschema

    jsonschema.validate(results, RESULTS_SCHEMA)
