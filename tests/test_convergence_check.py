"""`softreach verify --continue-steps`: rows called converged stay put under an optimiser of the check's own."""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from softreach.cli import main
from softreach.convergence_check import MAX_GAIN, continue_rows
from softreach.random_models import save_random_model
from softreach.results.folder import read_json, read_problems
from softreach.verification import _Folder, load_reference_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Exp 1 at budget 1 on a tiny model: run to convergence (`long`) and stopped after 4 steps (`short`)."""
    root = tmp_path_factory.mktemp("continue")
    model = save_random_model(root / "tiny", "llama", n_layers=3)
    out = {}
    for name, steps in (("long", "300"), ("short", "4")):
        out[name] = root / name
        assert main(["run", "exp1", "--model", str(model), "--layer", "2", "--targets", "3", "--steps", steps,
                     "--seq-len", "6", "--floor-draws", "1", "--norm-budget", "1", "--no-progress",
                     "--out", str(out[name])]) == 0
    out["model"] = model
    return out


def _verify(capsys, *args):
    code = main(["verify", *map(str, args), "--no-progress"])
    return code, capsys.readouterr().out


def _gains(text, verdict):
    """(n rows, median gain, max gain) of one verdict from the check's line."""
    n, median, top = re.search(rf"{verdict} (\d+) rows gain median ([-\d.]+) \(max ([-\d.]+)\)", text).groups()
    return int(n), float(median), float(top)


def test_converged_rows_pass_and_the_check_moves_unconverged_ones(runs, capsys):
    assert {r["verdict"] for r in read_problems(runs["long"])} == {"converged"}
    assert {r["verdict"] for r in read_problems(runs["short"])} == {"improving"}
    code, text = _verify(capsys, runs["long"], "--continue-steps", "30")
    assert code == 0, text
    n, _, top = _gains(text, "converged")
    assert n == 3 and 0 <= top <= MAX_GAIN
    code, text = _verify(capsys, runs["short"], "--continue-steps", "30")
    assert code == 0, text  # improving rows may gain: only converged ones are held to the bar
    n, median, _ = _gains(text, "improving")
    assert n == 3 and median > MAX_GAIN  # the check has the power to find what is left


def test_a_row_wrongly_called_converged_fails_naming_it(runs, tmp_path, capsys):
    out = shutil.copytree(runs["short"], tmp_path / "short")
    lines = (out / "problems.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec.update(verdict="converged", converged=True)
    lines[1] = json.dumps(rec)
    (out / "problems.jsonl").write_text("\n".join(lines) + "\n")
    code, text = _verify(capsys, out, "--continue-steps", "30")
    assert code == 1 and f"FAIL {out} row 1 verdict: reported converged" in text
    assert "row 0" not in text and "row 2" not in text
    code, _ = _verify(capsys, out)  # without the continuation the folder's numbers themselves agree
    assert code == 0


def test_the_continuation_starts_at_the_rows_loss_descends_and_keeps_the_budget(runs):
    folder = runs["short"]
    config, tensors, rows = read_json(folder / "config.json"), load_file(str(folder / "tensors.safetensors")), read_problems(folder)
    f = _Folder(folder, load_reference_model(str(runs["model"]), None, torch.device("cpu")), config, tensors,
                torch.device("cpu"))
    result = continue_rows(f, config, rows, tensors["soft_prompt"], tensors["target"], config["norm_budget"], 10)
    # its own forward and loss: 1 - cos without position 0, as the engine reported it
    torch.testing.assert_close(result.start, torch.tensor([1 - r["cos_no_pos0"] for r in rows]), atol=1e-5, rtol=0)
    assert (result.end <= result.start).all() and (result.end < result.start - 1e-3).any()
    assert result.inputs.norm(dim=-1).max() <= config["norm_budget"] * (1 + 1e-5)
    assert result.evaluations >= 11


def test_steering_folders_are_continued_and_discrete_ones_skipped(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "steer"
    assert main(["run", "steer", "--model", str(tiny_model_dir), "--targets", "2", "--steps", "6", "--floor-draws",
                 "1", "--no-progress", "--out", str(out), "--layout", "infix", "--before", "4", "--after", "6",
                 "--soft", "3", "--steer", "last:2", "--rungs", "gcg", "--gcg-budget", "8"]) == 0
    capsys.readouterr()
    code, text = _verify(capsys, out / "soft", out / "gcg", "--continue-steps", "10")
    assert code == 0, text
    soft, gcg = text.splitlines()[:2]
    assert _gains(soft, "improving")[0] == 2 and gcg.endswith("not continued: discrete inputs")


def test_a_negative_step_count_is_one_line_exit_2(runs, capsys):
    code = main(["verify", str(runs["long"]), "--continue-steps", "-1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--continue-steps" in err


def test_folders_that_cannot_be_continued_say_why(runs, tmp_path, capsys):
    """Ladder rungs: a norm bound's feasible set is not a stated norm budget; free vectors state no verdicts."""
    out = tmp_path / "ladder"
    assert main(["ladder", "--model", str(runs["model"]), "--layer", "2", "--targets", "2", "--seq-len", "6",
                 "--steps", "4", "--rungs", "free,norm_bound", "--norm-bounds", "2", "--floor-draws", "1",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    code, text = _verify(capsys, out / "free", out / "norm_bound_c2", "--continue-steps", "5")
    assert code == 0, text
    free, bound = text.splitlines()[:2]
    assert free.endswith("not continued: no verdicts") and bound.endswith("not continued: rung norm_bound (its feasible set is not "
                                                          "the folder's norm budget)")
