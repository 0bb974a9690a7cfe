"""The config schema (schemas/config.schema.yaml) as the one source of defaults and bounds.

Settings dataclasses read their defaults from it and check values against it, so config
validation (`snakemake.utils.validate`) and code can never disagree on a default or a bound.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def load_schema() -> dict:
    import yaml

    try:
        return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    except OSError as err:
        raise RuntimeError(f"blogtune: config schema not found at {SCHEMA_PATH} ({err})") from None


def section_schema(section: str) -> dict:
    return load_schema()["properties"][section]


def section_defaults(section: str) -> dict[str, Any]:
    """key -> schema default of one config section (keys without a default are left out)."""
    props = section_schema(section).get("properties", {})
    return {k: v["default"] for k, v in props.items() if "default" in v}


def check_section(section: str, values: dict) -> None:
    """ValueError naming `section.key` and the rule it breaks, for the first value the schema rejects."""
    import jsonschema

    props = section_schema(section).get("properties", {})
    known = {k: v for k, v in values.items() if k in props}
    schema = {"type": "object", "properties": props}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(known))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path)
        raise ValueError(f"{section}.{key}: {error.message}")
