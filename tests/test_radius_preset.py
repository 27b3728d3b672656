"""The radius preset on a tiny random model: seven budgets per experiment, warm-started upward, a radius per target
at two thresholds, every folder verifiable."""
import json
import math

import pytest
from conftest import verify

from softreach.cli import main
from softreach.presets import preset

BUDGETS = ("_b0.25", "_b0.5", "_b1", "_b2", "_b4", "_b8", "")
CONDITIONS = ("exp1", "exp4_no_attn", "exp4_no_mlp", "exp2a", "exp2b")


@pytest.fixture(scope="module")
def radius_run(tmp_path_factory):
    from softreach.random_models import save_random_model

    root = tmp_path_factory.mktemp("radius")
    save_random_model(root / "tiny", "gpt_neox", n_layers=2)
    argv = ["suite", "--preset", "radius", "--model", str(root / "tiny"), "--targets", "3", "--seq-len", "6",
            "--steps", "40", "--floor-draws", "2", "--mean-windows", "16", "--set", "moment_windows=64",
            "--no-progress", "--out", str(root / "run")]
    assert main(argv) == 0
    return root / "run"


def test_the_preset_is_the_budget_ladder():
    p = preset("radius")
    assert p["experiments"] == ("exp1", "exp2a", "exp2b", "exp4")
    assert p["run"]["norm_budgets"] == (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)


def test_every_condition_at_every_budget_and_fidelity_never_falls(radius_run):
    names = sorted(p.name for p in radius_run.iterdir() if (p / "problems.jsonl").is_file())
    assert names == sorted(c + b for c in CONDITIONS for b in BUDGETS)
    for c in CONDITIONS:
        rows = [(radius_run / (c + b) / "problems.jsonl").read_text().splitlines() for b in BUDGETS]
        cos = [[json.loads(line)["cos_no_pos0"] for line in lines] for lines in rows]
        for smaller, larger in zip(cos, cos[1:]):  # each budget warm-starts from the one below
            assert all(b >= a - 1e-5 for a, b in zip(smaller, larger)), c


def test_report_has_radii_at_both_thresholds_and_the_figure(radius_run):
    text = (radius_run / "report.md").read_text()
    section = text.split("\n### Reachability radius per target\n", 1)[1]
    for c in ("0.99", "0.95"):
        assert f"Targets reached (cos w/o pos 0 ≥ {c}) at or below each budget" in section
        assert f"Radius per target (t{{i}} = row i of problems.jsonl, threshold cos w/o pos 0 ≥ {c})" in section
    for label in ("Exp 1", "Exp 2a", "Exp 2b", "Exp 4 no attention", "Exp 4 no MLP"):
        assert f"\n| {label} |" in section
    assert "Exp 1b" not in section.split("### Exp 4 difficulty")[0]  # a projection has no radius of its own
    assert (radius_run / "figures" / "radius.png").stat().st_size > 10_000


def test_verify_passes_on_every_folder(radius_run):
    folders = [p for p in radius_run.iterdir() if (p / "problems.jsonl").is_file()]
    for name, (code, lines) in verify(folders).items():
        assert code == 0, name + ": " + lines
