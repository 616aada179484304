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

_STAT = {  # models.stats.MeanCI.to_dict over repetitions
    "type": "object",
    "required": ["mean", "sd", "ci", "n"],
    "properties": {
        "mean": _NUMBER_OR_NULL,
        "sd": _NUMBER_OR_NULL,
        "ci": {"type": "array", "items": _NUMBER_OR_NULL, "minItems": 2, "maxItems": 2},
        "n": {"type": "integer", "minimum": 0},
    },
}
_EXPERIMENT = {  # simulation.experiment: what was repeated
    "type": "object",
    "required": ["methods", "folds", "seeds", "repetitions", "reference", "metrics"],
    "properties": {
        "methods": {"type": "array", "items": {"type": "string"}},
        "folds": {"type": "integer", "minimum": 1},
        "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        "repetitions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["seed", "fold", "dir"],
                "properties": {
                    "seed": {"type": "integer"},
                    "fold": {"type": ["integer", "null"]},
                    "dir": {"type": "string"},
                },
            },
        },
        "single_modality": {"type": ["string", "null"]},
        "reference": {"type": "string"},
        "partition": {"type": ["object", "null"]},
        "metrics": {"type": "array", "items": {"type": "string"}},
        "wall_seconds": {"type": "number", "minimum": 0},
    },
}
_COMPARISON = {  # a DeLong test (models.stats.AucComparison) of two methods on the same rows
    "type": "object",
    "required": ["comparison", "a", "b", "rows", "seed", "auc_a", "auc_b", "diff", "p", "n"],
    "properties": {
        "comparison": {"type": "string"},
        "a": {"type": "string"},
        "b": {"type": "string"},
        "rows": {"type": "string"},
        "seed": {"type": "integer"},
        "auc_a": _NUMBER_OR_NULL,
        "auc_b": _NUMBER_OR_NULL,
        "diff": _NUMBER_OR_NULL,
        "diff_ci": {"type": "array", "items": _NUMBER_OR_NULL, "minItems": 2, "maxItems": 2},
        "z": _NUMBER_OR_NULL,
        "p": _NUMBER_OR_NULL,
        "n": {"type": "integer", "minimum": 0},
    },
}

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
                    "seed": {"type": "integer"},
                    "fold": {"type": ["integer", "null"]},
                },
            },
        },
        "experiment": _EXPERIMENT,
        # method -> view ("pooled", "site-mean", "site:<name>") -> metric -> mean/sd/ci/n
        "summary": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": _STAT},
            },
        },
        # method -> seed -> exact metrics on the out-of-fold test rows
        "out_of_fold": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": _METRICS},
        },
        "comparisons": {"type": "array", "items": _COMPARISON},
    },
}


def validate_results(results: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``results`` breaks the results contract."""
    import jsonschema

    jsonschema.validate(results, RESULTS_SCHEMA)
