import json
import subprocess
import sys
from pathlib import Path

import pytest

from softreach.cli import main

VERIFY = Path(__file__).resolve().parents[2] / "shared" / "checks" / "verify_run.py"


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("softreach")]


def _tiny_args(model_dir, out, *extra):
    return ["run", "exp1", "--model", str(model_dir), "--targets", "3", "--restarts", "2", "--steps", "5",
            "--seq-len", "8", "--out", str(out), "--no-progress", "--floor-draws", "2", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--layer", "3"], "layer 3 is outside 1..2"),
    (["--layer", "0"], "layer 0 is outside 1..2"),
    (["--seq-len", "65"], "exceeds the model's 64 positions"),
    (["--targets", "100000"], "windows of 8 tokens"),
    (["--corpus", "/nonexistent/corpus.txt"], "corpus file not found"),
    (["--lr", "nan"], "--lr must be"),
    (["--init-scale", "inf"], "--init-scale must be"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, lines = _run(_tiny_args(tiny_model_dir, out, *extra), capsys)
    assert code == 2
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_short_corpus_is_refused(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("tiny")
    code, lines = _run(_tiny_args(tiny_model_dir, tmp_path / "out", "--corpus", str(corpus)), capsys)
    assert code == 2 and "corpus too short" in lines[0]


def test_missing_models_are_explained(tmp_path, capsys):
    code, lines = _run(_tiny_args("/nonexistent/model", tmp_path / "o"), capsys)
    assert code == 2 and "model path not found" in lines[0]
    code, lines = _run(_tiny_args("EleutherAI/pythia-160m-not-cached", tmp_path / "o"), capsys)
    assert code == 2 and "HF_HUB_OFFLINE" in lines[0] and "--model PATH" in lines[0]


def test_existing_result_is_never_overwritten_silently(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_tiny_args(tiny_model_dir, out)) == 0
    before = (out / "problems.jsonl").read_bytes()
    code, lines = _run(_tiny_args(tiny_model_dir, out, "--seed", "1"), capsys)
    assert code == 2 and "already exists" in lines[0]
    assert (out / "problems.jsonl").read_bytes() == before
    assert main(_tiny_args(tiny_model_dir, out, "--seed", "1", "--overwrite")) == 0
    assert (out / "problems.jsonl").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny-neox"]


def test_result_folder_contract_and_independent_check(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(_tiny_args(tiny_model_dir, out)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["source"] == str(tiny_model_dir.resolve()) and cfg["model"]["gguf_file"] is None
    assert cfg["layer"] == 1 and cfg["ablation"] == "none"
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all({"cos", "mse", "cos_no_pos0", "floor_cos", "restart_spread"} <= set(r) for r in rows)
    for name in ("tensors.safetensors", "curves.safetensors", "summary.md", "summary.json"):
        assert (out / name).is_file()
    check = subprocess.run([sys.executable, str(VERIFY), str(out)], capture_output=True, text=True,
                           env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stdout + check.stderr
    assert ": ok" in check.stdout
