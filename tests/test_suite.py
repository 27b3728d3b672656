"""The suite on a tiny random model: every folder verifiable, SIGKILL-resume identical, bad input refused."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import verify
from safetensors.torch import load_file

from softreach.cli import main

CONDITIONS = ["exp1", "exp1b", "exp4_no_attn", "exp4_no_mlp", "exp2a", "exp2b", "exp3", "exp5_raw", "exp5_pca"]
FOLDERS = [c + suffix for c in CONDITIONS for suffix in ("_b1", "")]  # the quick preset: budgets 1 and inf


def suite_args(model_dir, out, *extra):
    return ["suite", "--preset", "quick", "--model", str(model_dir), "--targets", "3", "--seq-len", "8",
            "--steps", "20", "--floor-draws", "2", "--mean-windows", "32", "--set", "moment_windows=200",
            "--set", "checkpoint_every=5", "--set", "steps.exp2a=300", "--out", str(out), "--no-progress", *extra]


def _results(out):
    """Everything a run computed, minus timings: tensors and problems of every folder."""
    res = {}
    for name in FOLDERS:
        res[name] = (load_file(str(out / name / "tensors.safetensors")),
                     (out / name / "problems.jsonl").read_text())
    return res


@pytest.fixture(scope="module")
def finished_suite(tmp_path_factory):
    from softreach.random_models import save_random_model

    root = tmp_path_factory.mktemp("suite")
    save_random_model(root / "tiny", "gpt_neox", n_layers=2)
    assert main(suite_args(root / "tiny", root / "straight")) == 0
    return root


def test_suite_writes_every_folder_and_the_report(finished_suite):
    out = finished_suite / "straight"
    for name in FOLDERS:
        assert (out / name / "problems.jsonl").is_file(), name
    assert not (out / ".checkpoints").exists()
    assert (out / "report.md").is_file()
    rows = [json.loads(x) for x in (out / "exp3" / "problems.jsonl").read_text().splitlines()]
    assert sorted({r["alpha"] for r in rows}) == [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
    rows = [json.loads(x) for x in (out / "exp5_pca" / "problems.jsonl").read_text().splitlines()]
    assert sorted({r["fraction"] for r in rows}) == [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
    corr = json.loads((out / "exp4_analysis.json").read_text())["correlations"]
    assert {(c["a"], c["b"]) for c in corr} == {("full", "no_attn"), ("full", "no_mlp"), ("no_attn", "no_mlp")}
    moments = json.loads((out / "exp2a" / "analysis.json").read_text())
    assert moments["mean_max_abs_z"] < 5 and moments["cov_rel_error"] < 0.2


def test_verify_passes_on_every_folder(finished_suite):
    codes = verify([finished_suite / "straight" / name for name in FOLDERS])
    assert sorted(codes) == sorted(FOLDERS)
    for name, (code, text) in codes.items():
        assert code == 0, name + ": " + text


def test_sigkill_and_resume_equals_an_uninterrupted_run(finished_suite):
    out = finished_suite / "killed"
    cmd = [sys.executable, "-m", "softreach.cli"] + suite_args(finished_suite / "tiny", out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / ".checkpoints" / "exp2a_b1"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt.glob("chunk_*.pt")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(ckpt.glob("chunk_*.pt")), "the run never reached exp2a's first checkpoint"
    assert not (out / "exp2a_b1").exists(), "killed too late: exp2a had already finished"
    done_before = {n: (out / n / "tensors.safetensors").stat().st_mtime_ns for n in FOLDERS if (out / n).exists()}
    assert "exp1" in done_before and "exp4_no_mlp" in done_before and "exp1_b1" in done_before
    assert main(suite_args(finished_suite / "tiny", out)) == 0
    for name, mtime in done_before.items():  # nothing already computed was recomputed
        assert (out / name / "tensors.safetensors").stat().st_mtime_ns == mtime
    straight, resumed = _results(finished_suite / "straight"), _results(out)
    for name in FOLDERS:
        a, b = straight[name], resumed[name]
        assert a[1] == b[1], f"{name}: problems differ after resume"
        for key in a[0]:
            assert (a[0][key] == b[0][key]).all(), f"{name}/{key} differs after resume"


def test_a_folder_made_by_another_config_is_not_resumed(finished_suite, capsys):
    out = finished_suite / "straight"
    before = (out / "exp1" / "problems.jsonl").read_bytes()
    assert main(suite_args(finished_suite / "tiny", out, "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert "made by another config" in err and "run.seed" in err
    assert (out / "exp1" / "problems.jsonl").read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--experiments", "exp1,exp9"], "unknown experiment 'exp9'"),
    (["--set", "exp3_pairs=2", "--set", "exp3_pairs=3"], "conflicting values for exp3_pairs"),
    (["--set", "steps.exp1b=10"], "only exp1, exp4"),
    (["--set", "nonsense=1"], "unknown setting 'nonsense'"),
])
def test_bad_suite_input_is_refused(finished_suite, tmp_path, capsys, extra, message):
    code = main(suite_args(finished_suite / "tiny", tmp_path / "o", *extra))
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()
