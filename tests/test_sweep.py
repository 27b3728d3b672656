"""Sweeps on two tiny random models: grid expansion, local backend, collect, Ray backend identical to local,
a killed Ray worker retried, resume without recomputation, bad grids refused in one line."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from softreach.cli import main
from softreach.errors import UserError
from softreach.sweep import collect, load_sweep, parse_grid, plan, problem_steps, run_sweep

CONDITIONS = ["exp1", "exp2b"]
SLUGS = ["tiny2__L01", "tiny2__L02", "tiny3__L01", "tiny3__L02", "tiny3__L03"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as each Ray actor uses (num_cpus=1): same kernels, same bits, and no spinning on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from softreach.random_models import save_random_model

    root = tmp_path_factory.mktemp("sweep")
    for name, arch, n in (("tiny2", "gpt_neox", 2), ("tiny3", "llama", 3)):
        save_random_model(root / name, arch, n_layers=n)
    return root


def grid(root, **changes) -> dict:
    raw = {"models": [str(root / "tiny2"), str(root / "tiny3")], "layers": "all", "preset": "quick",
           "experiments": ["exp1", "exp2b"],
           "overrides": {"run": {"targets": 2, "seq_len": 8, "floor_draws": 2, "mean_windows": 32},
                         "optim": {"steps": 10}, "suite": {"moment_windows": 200, "checkpoint_every": 5}}}
    raw.update(changes)
    return raw


def write_grid(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def results(out) -> dict:
    """Tensors and problems.jsonl of every cell and condition (no timings)."""
    return {(s, c): (load_file(str(out / "cells" / s / c / "tensors.safetensors")),
                     (out / "cells" / s / c / "problems.jsonl").read_text())
            for s in SLUGS for c in CONDITIONS}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][1] == b[key][1], f"{key}: problems differ"
        assert a[key][0].keys() == b[key][0].keys()
        for name in a[key][0]:
            assert torch.equal(a[key][0][name], b[key][0][name]), f"{key}/{name} differs"


def mtimes(out) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in (out / "cells").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def local_out(root):
    """The grid run with the local backend through the CLI (which also collects)."""
    out = root / "local"
    assert main(["sweep", str(write_grid(root / "grid.yaml", grid(root))), "--out", str(out), "--no-progress"]) == 0
    assert (out / "cells.parquet").is_file() and (out / "sweep_report.md").is_file()
    return out


# ---------------------------------------------------------------- grid

def test_grid_expands_to_cells(root):
    sweep = parse_grid(grid(root, grid={"optim.lr": [0.01, 0.1]}))
    assert len(sweep.cells) == 10
    assert [c.slug for c in sweep.cells[:4]] == ["tiny2__L01__optim.lr=0.01", "tiny2__L01__optim.lr=0.1",
                                                 "tiny2__L02__optim.lr=0.01", "tiny2__L02__optim.lr=0.1"]
    assert sweep.grid["layers_by_model"] == {str(root / "tiny2"): [1, 2], str(root / "tiny3"): [1, 2, 3]}
    c = sweep.cells[-1]
    assert (c.model, c.layer, c.combo) == (str(root / "tiny3"), 3, {"optim.lr": 0.1})
    assert (c.config.run.model, c.config.run.layer, c.config.run.optim.lr) == (str(root / "tiny3"), 3, 0.1)
    assert c.config.experiments == ("exp1", "exp2b") and c.config.moment_windows == 200
    assert c.config.restarts_for("exp2b") == 1 and c.config.exp3_pairs == 2  # the quick preset underneath
    assert problem_steps(c.config) == 2 * 2 * 10 + 2 * 1 * 10  # exp1: 2 restarts; exp2b: 1 (quick)
    pruned = parse_grid(grid(root, grid={"optim.prune_after": [4]})).cells[0].config
    assert problem_steps(pruned) == 2 * (2 * 4 + 10 - 4) + 2 * 1 * 10  # exp1's 2 restarts pruned to 1 after 4 steps
    every = parse_grid(grid(root, layers={"every": 2}))
    assert [c.slug for c in every.cells] == ["tiny2__L02", "tiny3__L02"]
    listed = parse_grid(grid(root, layers=[2, 1], grid={"suite.steps.exp1": [3]}))
    assert [c.layer for c in listed.cells] == [1, 2, 1, 2]
    assert listed.cells[0].config.steps_for("exp1") == 3 and listed.cells[0].config.steps_for("exp2b") == 10


def test_the_scale_on_paper_numbers_of_docs_sweeps_md():
    """5 models x all layers x seed: 84 cells, 1.86 M problem-steps each, 82.77 M at full-depth cost."""
    n = {"smollm2-135m": 30, "EleutherAI/pythia-70m": 6, "EleutherAI/pythia-160m": 12,
         "EleutherAI/pythia-410m": 24, "openai-community/gpt2": 12}
    sweep = parse_grid({"models": list(n), "layers": "all", "preset": "seed"}, n_layers_of=n.get)
    assert len(sweep.cells) == 84 and {problem_steps(c.config) for c in sweep.cells} == {1_860_000}
    rows = plan(sweep, rate=10_000)
    assert sum(r["problem_steps"] for r in rows) == 156_240_000
    assert sum(r["seconds"] for r in rows) == pytest.approx(82.77e6 / 10_000)


@pytest.mark.parametrize("change, message", [
    ({"model": ["x"]}, "unknown key 'model'"),
    ({"layers": [1, 3]}, "layer 3 is out of range for"),
    ({"layers": "some"}, "layers: expected a list of integers"),
    ({"layers": {"every": 0}}, "{every: K} with K >= 1"),
    ({"experiments": ["exp1", "exp9"]}, "unknown experiment 'exp9'"),
    ({"preset": "slow"}, "unknown preset 'slow'"),
    ({"overrides": {"runs": {}}}, "unknown group 'runs'"),
    ({"overrides": {"run": {"layer": 2}}}, "overrides.run.layer: set it with the grid's top-level 'layers' key"),
    ({"overrides": {"suite": {"experiments": ["exp1"]}}}, "overrides.suite.experiments: set it with the grid's"),
    ({"overrides": {"optim": {"lr_decay": 2}}}, "overrides: unknown setting 'optim.lr_decay'"),
    ({"overrides": {"run": {"target": 2}}}, "overrides: unknown setting 'run.target' (did you mean run.targets?)"),
    ({"overrides": {"run": {"targets": "many"}}}, "run.targets must be an integer, got 'many'"),
    ({"grid": {"run.optim": [{}]}}, "grid: unknown setting 'run.optim'"),
    ({"overrides": {"suite": {"stepz": {}}}}, "overrides: unknown setting 'stepz'"),
    ({"grid": {"optim.lrr": [0.1]}}, "grid: unknown setting 'optim.lrr'"),
    ({"grid": {"lr": [0.1], "optim.lr": [0.2]}}, "grid: axes 'lr' and 'optim.lr' set the same setting"),
    ({"grid": {"run.layer": [1]}}, "grid: axis 'run.layer' is set by the grid's top-level keys"),
    ({"grid": {"optim.lr": []}}, "needs a non-empty list"),
    ({"models": []}, "models: expected a non-empty list"),
    ({"models": ["/nonexistent/model"]}, "model path not found"),
])
def test_bad_grids_are_one_line_errors(root, tmp_path, change, message):
    path = write_grid(tmp_path / "bad.yaml", grid(root, **change))
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert str(e.value).startswith(str(path))


def test_a_bad_grid_is_exit_code_2_before_any_folder_is_made(root, tmp_path, capsys):
    path = write_grid(tmp_path / "bad.yaml", grid(root, layers=[1, 3]))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "layer 3 is out of range for" in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "o").exists()


def test_command_line_settings_go_over_the_grid_and_never_over_an_axis(root, tmp_path):
    path = write_grid(tmp_path / "g.yaml", grid(root, grid={"optim.lr": [0.01, 0.1]}))
    sweep = load_sweep(path, {"optim.steps": 7, "steps.exp1": 3, "run.targets": 4})
    cfg = sweep.cells[0].config
    assert (cfg.run.optim.steps, cfg.steps_for("exp1"), cfg.steps_for("exp2b"), cfg.run.targets) == (7, 3, 7, 4)
    assert cfg.run.seq_len == 8 and cfg.restarts_for("exp1") == 2  # the grid's overrides and the preset underneath
    assert sweep.grid["overrides"]["optim"] == {"steps": 7} and sweep.grid["overrides"]["suite"]["steps"] == {"exp1": 3}
    assert [c.config.run.optim.lr for c in sweep.cells[:2]] == [0.01, 0.1]
    for key in ("lr", "optim.lr", "run.optim.lr"):
        with pytest.raises(UserError, match=r"g.yaml: --set .*the grid sweeps it as the axis 'optim.lr'"):
            load_sweep(path, {key: 0.5})
    with pytest.raises(UserError, match="--set layer: set it with the grid's top-level 'layers' key"):
        load_sweep(path, {"layer": 2})
    same = load_sweep(write_grid(tmp_path / "h.yaml", grid(root, overrides={"lr": 0.05, "steps.exp1": 3})))
    nested = load_sweep(write_grid(tmp_path / "i.yaml", grid(root, overrides={"optim": {"lr": 0.05},
                                                                                  "suite": {"steps": {"exp1": 3}}})))
    assert same.record() == nested.record()  # dotted keys and groups are one syntax


def test_bad_yaml_and_missing_sweep_folder(tmp_path):
    (tmp_path / "g.yaml").write_text("models: [a\nlayers: 1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_sweep(tmp_path / "g.yaml")
    with pytest.raises(UserError, match="not a sweep folder"):
        collect(tmp_path)


# ---------------------------------------------------------------- local backend and collect

def test_local_backend_writes_every_cell_and_collect_builds_the_table(local_out):
    record = json.loads((local_out / "sweep.json").read_text())
    assert [c["slug"] for c in record["cells"]] == SLUGS
    for slug in SLUGS:
        suite = json.loads((local_out / "cells" / slug / "suite.json").read_text())["config"]
        assert suite["run"]["layer"] == int(slug[-2:])
        for cond in CONDITIONS:
            folder = local_out / "cells" / slug / cond
            assert {"config.json", "tensors.safetensors", "problems.jsonl"} <= {p.name for p in folder.iterdir()}
    assert not list((local_out / "cells").glob("*/.checkpoints"))
    df = collect(local_out)
    assert (local_out / "cells.parquet").is_file() and len(df) == len(SLUGS) * len(CONDITIONS) * 2  # budgets 1, inf
    import pandas as pd

    assert pd.read_parquet(local_out / "cells.parquet").equals(df)
    assert sorted(set(zip(df["cell"], df["condition"]))) == sorted(
        (s, c + b) for s in SLUGS for c in CONDITIONS for b in ("", "_b1"))
    assert sorted(set(df["norm_budget"])) == [1.0, float("inf")]
    assert (df["copy_cos_no_pos0"].notna()).all() and ((df["share_converged"] >= 0) & (df["share_converged"] <= 1)).all()
    row = df[(df["cell"] == "tiny3__L02") & (df["condition"] == "exp1")].iloc[0]
    rows = [json.loads(x) for x in (local_out / "cells" / "tiny3__L02" / "exp1" / "problems.jsonl").read_text().splitlines()]
    assert row["median_cos"] == pytest.approx(float(torch.tensor([r["cos"] for r in rows], dtype=torch.float64)
                                                    .quantile(0.5)))
    assert (row["model"], row["layer"], row["n_layers"], row["experiment"], row["ablation"], row["n_targets"]) == (
        str(local_out.parent / "tiny3"), 2, 3, "exp1", "none", 2)
    assert (df["cos_minus_floor"] == df["median_cos"] - df["floor_cos"]).all()
    assert df[["median_cos", "mean_cos", "median_cos_no_pos0", "median_mse", "floor_cos", "seconds"]].notna().all().all()
    report = (local_out / "sweep_report.md").read_text()
    assert "5 of 5 cells have results" in report and "figures/sweep_cos_by_layer.png" in report
    assert (local_out / "figures" / "sweep_cos_by_layer.png").stat().st_size > 1000
    # the token-scale section: budget 1's cells beside their copy baseline, floor and share converged
    budget = report.split("## At token-scale input norms", 1)[1].split("\n## ", 1)[0]
    assert "figures/sweep_budgets_by_layer.png" in budget
    assert (local_out / "figures" / "sweep_budgets_by_layer.png").stat().st_size > 1000
    r = df[(df["cell"] == "tiny3__L02") & (df["condition"] == "exp1_b1")].iloc[0]
    line = next(x for x in budget.splitlines() if x.startswith("| `tiny3` | 2 |"))
    assert f"{r['median_cos_no_pos0']:.4f} ({r['copy_cos_no_pos0']:.4f}, {r['floor_cos_no_pos0']:.4f}," in line
    assert "exp1_b1" in budget and "| exp1 |" not in budget  # free cells stay in the table below


def test_second_run_recomputes_nothing(root, local_out, monkeypatch):
    before = mtimes(local_out)

    def no_loading(*a, **k):
        raise AssertionError("a finished sweep loaded a model")

    monkeypatch.setattr("softreach.models.load_model", no_loading)
    counts = run_sweep(parse_grid(grid(root)), local_out, show_progress=False)
    assert counts == {"cells": 5, "skipped": 5, "ran": 0}
    assert mtimes(local_out) == before


def test_a_partial_cell_resumes_and_only_its_missing_folder_is_recomputed(root, local_out, tmp_path):
    cell = local_out / "cells" / "tiny3__L02"
    saved = tmp_path / "exp2b"
    shutil.move(cell / "exp2b", saved)
    exp1_mtime = (cell / "exp1" / "tensors.safetensors").stat().st_mtime_ns
    counts = run_sweep(parse_grid(grid(root)), local_out, show_progress=False)
    assert counts["ran"] == 1
    assert (cell / "exp1" / "tensors.safetensors").stat().st_mtime_ns == exp1_mtime
    a, b = load_file(str(saved / "tensors.safetensors")), load_file(str(cell / "exp2b" / "tensors.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (saved / "problems.jsonl").read_text() == (cell / "exp2b" / "problems.jsonl").read_text()


def test_a_folder_made_by_another_grid_is_refused(root, local_out):
    before = mtimes(local_out)
    other = grid(root)
    other["overrides"]["run"]["targets"] = 3
    with pytest.raises(UserError, match=r"made by another grid \(differs in grid.overrides.run.targets\)"):
        run_sweep(parse_grid(other), local_out, show_progress=False)
    assert mtimes(local_out) == before


def test_plan_and_the_local_backend_options(root, local_out):
    sweep = load_sweep(root / "grid.yaml")
    rows = plan(sweep, rate=10)
    assert sum(r["problem_steps"] for r in rows) == 300
    assert {r["cell"]: r["problem_steps"] for r in rows}["tiny3__L03"] == 60
    assert {r["cell"]: r["seconds"] for r in rows}["tiny3__L02"] == pytest.approx(60 * 2 / 3 / 10)
    with pytest.raises(UserError, match="apply to --backend ray only"):
        run_sweep(sweep, local_out, workers=2)


def test_cli_collect_and_dry_run(root, local_out, capsys):
    assert main(["collect", str(local_out)]) == 0
    assert "cells.parquet (20 rows)" in capsys.readouterr().out  # 5 cells x 2 experiments x budgets 1 and inf
    assert main(["sweep", str(root / "grid.yaml"), "--dry-run", "--rate", "10"]) == 0
    out = capsys.readouterr().out
    assert "5 cells, 300 problem-steps" in out and "tiny3__L03  60 problem-steps" in out
    assert main(["sweep", str(root / "grid.yaml"), "--dry-run", "--set", "optim.steps=20"]) == 0
    assert "5 cells, 600 problem-steps" in capsys.readouterr().out
    assert main(["sweep", str(root / "grid.yaml"), "--out", str(local_out), "--workers", "2"]) == 2
    assert "apply to --backend ray only" in capsys.readouterr().err


def test_the_local_path_never_imports_ray():
    code = "import sys, softreach.sweep, softreach.sweep.ray_backend; assert 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- Ray backend (ray must be installed: no skip)

@pytest.fixture(scope="module")
def ray_cluster():
    import ray  # the ray extra is part of the test set-up: a missing ray fails here

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_backend_writes_the_same_tensors_as_local(root, local_out, ray_cluster):
    out = root / "ray"
    counts = run_sweep(parse_grid(grid(root)), out, backend="ray", workers=2, show_progress=False)
    assert counts == {"cells": 5, "skipped": 0, "ran": 5}
    assert json.loads((out / "sweep.json").read_text())["cells"] == json.loads(
        (local_out / "sweep.json").read_text())["cells"]
    assert_same(results(local_out), results(out))


def test_a_killed_ray_worker_is_retried_and_the_sweep_completes(root, local_out, ray_cluster, tmp_path, capfd):
    """The worker on tiny2__L02 dies twice: Ray restarts it and retries once (max_restarts=1), then the
    driver resubmits the cell to a fresh worker."""
    out, marker = root / "ray_killed", tmp_path / "crash"
    crash = {"cell": "tiny2__L02", "times": 2, "marker": str(marker)}
    counts = run_sweep(parse_grid(grid(root)), out, backend="ray", workers=2, show_progress=False,
                       max_restarts=1, crash=crash)
    assert counts["ran"] == 5
    assert (tmp_path / "crash.0").exists() and (tmp_path / "crash.1").exists(), "the worker was never killed"
    assert "worker lost on tiny2__L02; resubmitted to a fresh worker" in capfd.readouterr().err
    assert_same(results(local_out), results(out))


def test_the_cli_wires_sweep_and_collect(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("models: [smollm2-135m]\nlayers: all\npreset: quick\nbogus: 1\n")
    assert main(["sweep", str(grid), "--out", str(tmp_path / "out")]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["collect", str(tmp_path / "missing")]) == 2
