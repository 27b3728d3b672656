import json
import subprocess
import sys

import pytest

from softreach.cli import main


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


def test_result_folder_contract_and_independent_check(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_tiny_args(tiny_model_dir, out)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["source"] == str(tiny_model_dir.resolve()) and cfg["model"]["gguf_file"] is None
    assert cfg["layer"] == 1 and cfg["ablation"] == "none"
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all({"cos", "mse", "cos_no_pos0", "floor_cos", "restart_spread"} <= set(r) for r in rows)
    for name in ("tensors.safetensors", "curves.safetensors", "summary.md", "summary.json"):
        assert (out / name).is_file()
    capsys.readouterr()
    assert main(["verify", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"ok   {out}: 3/3 rows")


def test_lbfgs_is_a_solver_choice_whose_folders_verify(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_tiny_args(tiny_model_dir, out, "--solver", "lbfgs", "--norm-budget", "1")) == 0
    assert json.loads((out / "config.json").read_text())["optim"]["solver"] == "lbfgs"
    capsys.readouterr()
    assert main(["verify", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"ok   {out}: 3/3 rows")
    code, lines = _run(_tiny_args(tiny_model_dir, tmp_path / "o2", "--solver", "lbfgs", "--step-rule", "relative"),
                       capsys)
    assert code == 2 and "--step-rule relative is Adam's" in lines[0] and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 40, "is not a text file"),
    ("naïve café text ".encode("latin-1") * 200, "is not UTF-8 text"),
    (b"\x01\x02\x03 some words \x04\x05" * 200, "does not look like text"),
])
def test_binary_or_non_utf8_corpus_is_refused(tiny_model_dir, tmp_path, capsys, content, message):
    corpus = tmp_path / "c.bin"
    corpus.write_bytes(content)
    code, lines = _run(_tiny_args(tiny_model_dir, tmp_path / "out", "--corpus", str(corpus)), capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [
    ["run", "exp1", "--out", "X"], ["run", "exp2b", "--out", "X"], ["suite", "--out", "X"], ["ladder", "--out", "X"],
    ["bench"], ["sweep", "grid.yaml", "--dry-run"], ["report", "X"], ["collect", "X"],
])
def test_every_command_refuses_an_unknown_setting(command, capsys, tmp_path):
    code, lines = _run([*command, "--set", "no_such_setting=3"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "no_such_setting" in lines[0]
    assert not (tmp_path / "X").exists()


def test_set_yaml_preset_and_flags_follow_one_precedence(tmp_path):
    import argparse

    from softreach.cli import run
    from softreach.cli.args import SUITE_ALIASES, settings
    from softreach.config import SuiteConfig
    from softreach.errors import UserError
    from softreach.presets import preset

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    run.add_parser(sub)
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("run: {targets: 7, restarts: 5}\noptim: {lr: 0.3}\nsuite: {steps: {exp2b: 900}}\n")

    def cfg(*argv):
        a = p.parse_args(["run", "exp1", "--out", "X", *argv])
        return settings(a, SuiteConfig, preset("quick"), SUITE_ALIASES)

    c = cfg()  # the preset over the defaults
    assert (c.run.targets, c.run.restarts, c.run.optim.steps, c.run.optim.lr) == (6, 1, 600, 0.2)
    c = cfg("--config", str(yaml_file))  # YAML over the preset
    assert (c.run.targets, c.run.restarts, c.run.optim.lr, c.steps) == (7, 5, 0.3, {"exp2b": 900})
    c = cfg("--config", str(yaml_file), "--targets", "3", "--set", "optim.lr=0.05", "--set", "steps.exp2b=50")
    assert (c.run.targets, c.run.restarts, c.run.optim.lr, c.steps) == (3, 5, 0.05, {"exp2b": 50})
    c = cfg("--set", "final_lr_frac=0.1", "--norm-budget", "2,inf", "--no-early-stop")
    assert c.run.optim.final_lr_frac == 0.1 and c.run.norm_budgets == (2.0, float("inf"))
    assert c.run.optim.early_stop is False
    with pytest.raises(UserError, match="given twice"):
        cfg("--lr", "0.1", "--set", "lr=0.2")
    with pytest.raises(UserError, match="must be an integer"):
        cfg("--set", "targets=many")
    with pytest.raises(UserError, match="ambiguous|sub-keys"):
        cfg("--set", "steps=100")


def test_help_builds_without_importing_torch():
    code = ("import sys\nfrom softreach.cli.main import build_parser\np = build_parser()\n"
            "for c in ('run exp1 --out X', 'suite --out X', 'ladder --out X', 'sweep g', 'bench', 'report d', 'collect d'):\n"
            "    p.parse_known_args(c.split())\n"
            "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'numpy') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_run_exp1_and_the_suite_write_the_same_exp1(tiny_model_dir, tmp_path):
    """One Exp 1 path: `run exp1` writes the suite's exp1 folder (rows, tensors, trajectories) at --out."""
    from safetensors.torch import load_file

    args = ["--model", str(tiny_model_dir), "--targets", "3", "--restarts", "2", "--steps", "6", "--seq-len", "8",
            "--floor-draws", "2", "--no-progress"]
    assert main(["run", "exp1", *args, "--out", str(tmp_path / "one")]) == 0
    assert main(["suite", "--preset", "quick", "--experiments", "exp1", "--norm-budget", "inf", *args,
                 "--set", "restarts.exp1=2", "--set", "trajectory_problems=4", "--out", str(tmp_path / "suite")]) == 0
    one, suite = tmp_path / "one", tmp_path / "suite" / "exp1"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in suite.iterdir())
    assert (one / "problems.jsonl").read_text() == (suite / "problems.jsonl").read_text()
    a, b = load_file(str(one / "tensors.safetensors")), load_file(str(suite / "tensors.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    assert not any(p.name.startswith(".one") for p in tmp_path.iterdir())  # the hidden state folder is gone
