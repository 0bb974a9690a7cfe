"""config.yaml is validated before any work; a wrong key fails naming it."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "schemas/config.schema.yaml")


def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_config_is_valid_and_gets_defaults():
    cfg = default_config()
    del cfg["evaluate"]
    validate(cfg, SCHEMA, set_default=True)
    assert cfg["train"]["rank"] == 16
    assert cfg["evaluate"]["max_tokens"] == 200  # filled from the schema


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c["train"].update(rnak=8), "rnak"),
        (lambda c: c.update(base_modle="x"), "base_modle"),
        (lambda c: c["train"].update(rank=0), "rank"),
        (lambda c: c["train"].update(batch_size="four"), "batch_size"),
        (lambda c: c["split"]["fractions"].update(train=1.5), "train"),
        (lambda c: c["model"].update(bits=7), "bits"),
        (lambda c: c["export"].update(gguf_type="q4_k_m"), "gguf_type"),
    ],
)
def test_bad_values_name_the_key(mutate, needle):
    cfg = copy.deepcopy(default_config())
    mutate(cfg)
    with pytest.raises(WorkflowError) as err:
        validate(cfg, SCHEMA, set_default=True)
    assert needle in str(err.value)
