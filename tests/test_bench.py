"""The benchmark's machinery (not its timings): rows, ratios and FLOP counts on a tiny model."""
import pytest
import torch

from softreach.baseline import log_method_steps
from softreach.bench import bench_workload, flops_per_problem_step, format_table
from softreach.config import LOG_OPTIM, OptimConfig
from softreach.optimize import optimise


def test_flops_per_problem_step_counts_forward_and_input_backward():
    from softreach.random_models import random_model

    lm = random_model("gpt2", d_model=32, n_layers=4, d_mlp=128)
    t, d, layers = 10, 32, 2
    # per block and token: qkv 3d^2, out d^2, mlp 2*d*4d -> 12 d^2 multiply-adds; forward + input backward = 2x
    matmul = 2 * 2 * layers * t * 12 * d * d
    counted = flops_per_problem_step(lm, layers, t)
    assert matmul <= counted < 1.3 * matmul  # the rest is attention scores


def test_baseline_follows_the_same_trajectory_as_the_engine(tiny_lm):
    """The log's method (full forward, hidden_states[L]) and the engine optimise the same problem."""
    target = torch.randn(1, 5, tiny_lm.d_model)
    init = torch.randn(1, 5, tiny_lm.d_model)
    a = log_method_steps(tiny_lm, 2, target, init, steps=15)
    b = optimise(tiny_lm, 2, target, init, OptimConfig(**{**LOG_OPTIM, "steps": 15})).soft_prompt
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bench_rows_and_table(tiny_lm):
    roofs = {"float32": 1e10, "bfloat16": 1e9}  # bf16 slower than fp32: its row is skipped, as on AVX2 CPUs
    w = bench_workload("tiny", tiny_lm, 2, problems=6, seq_len=8, steps=3, baseline_steps=2, batch_size=6,
                       roofs=roofs, log=lambda _m: None)
    rows = w["rows"]
    assert rows["baseline (log's method)"]["ratio_to_baseline"] == 1.0
    assert rows["engine float32"]["problem_steps_per_s"] > 0 and 0 < rows["engine float32"]["roof_fraction"]
    assert "skipped" in rows["engine bfloat16"]
    table = format_table({"machine": "test", "roofs": roofs, "workloads": [w]})
    assert "| engine float32 |" in table and "skipped" in table


def test_solver_comparison_rows_and_table():
    """Every solver on the same problems per condition at budget 1; the best solver reaches the reference."""
    from softreach.solver_study import SOLVERS, solver_comparison, solver_table
    from softreach.random_models import random_model

    lm = random_model("llama")
    comp = solver_comparison(lm, 2, targets=2, steps=40, log=lambda _m: None)
    rows = comp["rows"]
    assert len(rows) == 5 * len(SOLVERS)
    for i in range(0, len(rows), len(SOLVERS)):
        group = rows[i : i + len(SOLVERS)]
        assert len({(r["condition"], r["budget"]) for r in group}) == 1
        assert all(r["median_cos_no_pos0"] <= r["reference"] + 1e-6 for r in group)
        # per target, some solver reached the reference (it is the best final value of one of them)
        for t in range(2):
            assert any(r["steps_to_reference"][t] > 0 for r in group)
    table = solver_table(comp)
    assert "| Exp 2b raw random | tangent Adam, plateau lr 0.2, 12 decays (default) |" in table
    assert "| Exp 5A raw corruption 0.5 | projected Adam" in table


def test_roof_is_the_best_of_several_shapes():
    from softreach.bench import _gemm_rate, matmul_roof

    dev = torch.device("cpu")
    small = (8, 8, 8)
    assert matmul_roof(torch.float32, dev, n=64, seconds=0.2, shapes=[small]) >= 0.5 * _gemm_rate(small, torch.float32, dev, 0.05)


def test_reference_values_take_the_better_run_per_target():
    """The reference of a target is the best of the long runs, which run from the same starts as each alone."""
    from softreach.solver_study import REFERENCE_RUNS, reference_table, reference_values
    from softreach.random_models import random_model

    lm = random_model("llama")
    refs = reference_values(lm, 2, targets=2, steps=30, log=lambda _m: None)
    assert len(refs["rows"]) == 5 * 2
    for r in refs["rows"]:
        assert set(r["by_run"]) == set(REFERENCE_RUNS)
        assert r["reference"] == max(r["by_run"].values())
        assert r["by_run"][r["run"]] == r["reference"]
        assert r["verdict"] in ("converged", "improving")
    table = reference_table(refs)
    assert table.count("\n| Exp ") == 5 and "| Exp 2b raw random |" in table
    assert [r["condition"] for r in refs["rows"]][-1] == "Exp 1 real"


def test_reference_values_resume_the_conditions_an_earlier_sitting_finished(tmp_path):
    """An interrupted reference run (its .partial file) resumes without redoing finished conditions; the result
    equals an uninterrupted run's, and other settings are refused."""
    from softreach.bench import _partial_reader, _partial_writer
    from softreach.errors import UserError
    from softreach.random_models import random_model
    from softreach.solver_study import reference_values

    lm = random_model("llama")
    straight = reference_values(lm, 2, targets=2, steps=20, log=lambda _m: None)
    out = str(tmp_path / "bench.json")
    write = _partial_writer(out)

    def stop_after_two(refs):
        write(refs)
        if len({r["condition"] for r in refs["rows"]}) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reference_values(lm, 2, targets=2, steps=20, log=lambda _m: None, partial=stop_after_two)
    messages = []
    resumed = reference_values(lm, 2, targets=2, steps=20, log=messages.append, resume=_partial_reader(out))
    assert sum("done in an earlier sitting" in m for m in messages) == 2
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed["rows"]) == strip(straight["rows"])
    with pytest.raises(UserError, match="other settings"):
        reference_values(lm, 2, targets=2, steps=30, log=lambda _m: None, resume=_partial_reader(out))


def test_reference_values_run_a_chosen_part_and_files_merge(tmp_path):
    """One run kind on a subset of conditions (a part per process); the parts' files read back as one result, and the
    solver comparison measures against them where they are higher than any solver's value."""
    import json

    from softreach.errors import UserError
    from softreach.random_models import random_model
    from softreach.solver_study import (RUN_KEYS, SOLVERS, read_references, reference_table, reference_values,
                                        solver_comparison, solver_table)

    lm = random_model("llama")
    part_a = reference_values(lm, 2, targets=2, steps=20, log=lambda _m: None, runs=("cosine",), conditions=("exp2b",))
    part_b = reference_values(lm, 2, targets=2, steps=20, log=lambda _m: None, runs=("cosine",), conditions=("exp1",))
    assert {r["condition"] for r in part_a["rows"]} == {"Exp 2b raw random"} and len(part_a["rows"]) == 2
    assert all(set(r["by_run"]) == {RUN_KEYS["cosine"]} for r in part_a["rows"])
    assert "the best of 1 run(s)" in reference_table(part_a)
    with pytest.raises(UserError, match="other settings"):  # a resume with other runs would mix two references
        reference_values(lm, 2, targets=2, steps=20, log=lambda _m: None, resume=part_a)
    with pytest.raises(UserError, match="unknown"):
        reference_values(lm, 2, targets=2, steps=20, log=lambda _m: None, conditions=("exp9",))

    # the parts as files, one with a reference no solver can come within 0.005 of (the tiny model's are easy)
    part_a["rows"][1]["reference"] = 1.01
    files = []
    for name, part in (("a.json", part_a), ("b.json.partial", part_b)):
        files.append(str(tmp_path / name))
        open(files[-1], "w").write(json.dumps({"references": part}))
    merged = read_references(files)
    assert [(r["condition"], r["target"]) for r in merged["rows"]] == [
        ("Exp 2b raw random", 0), ("Exp 2b raw random", 1), ("Exp 1 real", 0), ("Exp 1 real", 1)]
    comp = solver_comparison(lm, 2, targets=2, steps=20, log=lambda _m: None, conditions=("exp2b", "exp5a"),
                             references=merged)
    assert {r["condition"] for r in comp["rows"]} == {"Exp 2b raw random", "Exp 5A raw corruption 0.5"}
    for r in comp["rows"]:
        if r["condition"] == "Exp 2b raw random":
            assert r["steps_to_reference"][1] == -1
            assert r["reference"] >= part_a["rows"][0]["reference"] - 1e-9
    assert sum(r["condition"] == "Exp 5A raw corruption 0.5" for r in comp["rows"]) == len(SOLVERS)
    assert "the best of long runs of up to 20 evaluations" in solver_table(comp)

    other = dict(part_b, targets=3)
    open(tmp_path / "c.json", "w").write(json.dumps({"references": other}))
    with pytest.raises(UserError, match="different"):
        read_references([files[0], str(tmp_path / "c.json")])
    with pytest.raises(UserError, match="another layer"):
        solver_comparison(lm, 1, targets=2, steps=5, log=lambda _m: None, conditions=("exp1",), references=merged)
    open(tmp_path / "bad.json", "w").write("{}")
    with pytest.raises(UserError, match="holds no reference values"):
        read_references([str(tmp_path / "bad.json")])
    with pytest.raises(UserError, match="cannot read"):
        read_references([str(tmp_path / "missing.json")])


def test_bench_config_refuses_unknown_study_parts():
    from softreach.config import BenchConfig
    from softreach.errors import UserError

    from softreach.solver_study import CONDITION_KEYS, REFERENCE_RUNS, RUN_KEYS

    assert set(RUN_KEYS.values()) == set(REFERENCE_RUNS)  # the command-line names cover the study's runs
    assert "Exp 5A raw corruption 0.5" in CONDITION_KEYS.values()
    assert BenchConfig(reference_runs="cosine", study_conditions="exp2b, exp1").study_conditions == ("exp2b", "exp1")
    with pytest.raises(UserError, match="--reference-runs: unknown lbfgs"):
        BenchConfig(reference_runs="lbfgs")
    with pytest.raises(UserError, match="--study-conditions: unknown"):
        BenchConfig(study_conditions=())
