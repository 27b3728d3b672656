"""The report and its figures, on a fake suite folder of realistic random results (no model, CPU, seconds)."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from softreach.condition import ConditionResult, summarise
from softreach.errors import UserError
from softreach.exp1 import write_condition
from softreach.report import write_report

T, D, R, STEPS = 6, 8, 2, 40
LABELS = {"exp1": "Exp 1", "exp1b": "Exp 1b", "exp2a": "Exp 2a", "exp2b": "Exp 2b", "exp3": "Exp 3",
          "exp4_no_attn": "Exp 4 no attention", "exp4_no_mlp": "Exp 4 no MLP", "exp5_raw": "Exp 5A raw",
          "exp5_pca": "Exp 5B PCA"}
ALPHAS = [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


def _row(rng, i, level, floor):
    """One problems.jsonl row with every metric the condition solver writes."""
    cpp = np.clip(level + 0.004 * rng.standard_normal(T) - np.linspace(0, 0.004, T), -1, 1)  # [T]
    restart = np.clip(cpp.mean() - np.abs(0.001 * rng.standard_normal(R)), -1, 1)  # [R]
    best = int(rng.integers(R))
    restart[best] = cpp.mean()
    mse = float(rng.gamma(2.0, 0.01))
    return {"index": i, "best_restart": best, "cos": float(cpp.mean()), "mse": mse,
            "cos_no_pos0": float(cpp[1:].mean()), "mse_no_pos0": mse * 0.9, "centred_cos": float(level - 0.05),
            "fvu": float(rng.uniform(0.01, 0.1)),
            "cos_per_position": [float(c) for c in cpp], "restart_cos": [float(c) for c in restart],
            "restart_spread": float(restart.max() - restart.min()), "convergence_delta": float(rng.uniform(0, 0.003)),
            "final_loss": float(1 - cpp.mean() + 0.01 * mse), "floor_cos": float(floor + 0.03 * rng.standard_normal()),
            "floor_cos_no_pos0": float(floor - 0.05 + 0.03 * rng.standard_normal())}


def _condition(root, name, levels, rng, floor=0.55, ablation="none", extra=None, experiment=None):
    """Write a result folder with write_condition: one target per entry of `levels` (its mean cosine)."""
    n = len(levels)
    rows = [_row(rng, i, lvl, floor) for i, lvl in enumerate(levels)]
    for i, row in enumerate(rows):
        row.update(extra(i) if extra else {})
    decay = torch.exp(-torch.arange(STEPS) / 8.0)  # [S]
    final = torch.tensor([1 - r["cos"] for r in rows])  # [N]
    loss = (0.5 * decay + final[:, None, None]).expand(n, R, STEPS).clone()  # [N, R, S]
    result = ConditionResult(
        soft_prompt=torch.randn(n, T, D), target=torch.randn(n, T, D), all_soft_prompts=torch.randn(n, R, T, D),
        loss_curve=loss * (1 + 0.1 * torch.rand(n, R, 1)), cos_curve=1 - loss, problems=rows,
        summary=summarise(rows, n * R * STEPS, 2.0), seconds=2.0)
    config = {"experiment": experiment or name.split("_")[0], "layer": 3, "ablation": ablation, "seed": 0,
              "device": "cpu",
              "model": {"source": "tiny/neox", "gguf_file": None, "n_layers": 6, "d_model": D},
              "restarts": R, "seq_len": T, "corpus": "default",
              "optim": {"steps": STEPS, "lr": 0.01, "init_scale": 1.0, "mse_weight": 0.01}}
    write_condition(root / name, result, config, name, overwrite=False)


def _fake_suite(root, rng, names=tuple(LABELS)):
    """A suite folder with the given experiments, plus the side files (trajectories, analyses)."""
    n = 12
    if "exp1" in names:
        _condition(root, "exp1", 0.996 + 0.0005 * rng.standard_normal(n), rng)
        layers = list(range(7))
        shape = np.array([0.15, 0.5, 0.8, 0.996, 0.97, 0.9, 0.85])  # [layers]
        traj = np.clip(shape + 0.01 * rng.standard_normal((4, 7)), -1, 0.9999)  # [P, layers]
        (root / "exp1" / "trajectories.json").write_text(json.dumps({
            "layers": layers, "target_layer": 3, "problems": [0, 1, 2, 3], "cos_soft_vs_tokens": traj.tolist(),
            "norm_soft": (20 + rng.random((4, 7))).tolist(),
            "norm_tokens": (np.linspace(1, 30, 7) + rng.random((4, 7))).tolist()}))
    if "exp1b" in names:
        _condition(root, "exp1b", 0.6 + 0.05 * rng.standard_normal(n), rng)
        # the analysis exactly as the suite writes it: manifold_summary of soft vectors against an embedding matrix
        import torch

        from softreach.manifold import manifold_summary, nearest_tokens
        from softreach.random_models import char_tokenizer

        gen = torch.Generator().manual_seed(0)
        soft, emb = 20 * torch.randn(n, T, 16, generator=gen), torch.randn(102, 16, generator=gen)
        analysis = manifold_summary(soft, emb, char_tokenizer(), ks=(1, 4, 8, 16))
        analysis["nearest_cos_values"] = nearest_tokens(soft, emb)["cos"].flatten().tolist()
        (root / "exp1b" / "analysis.json").write_text(json.dumps(analysis))
    if "exp2a" in names:
        _condition(root, "exp2a", 0.977 + 0.002 * rng.standard_normal(n), rng, floor=0.3)
    if "exp2b" in names:
        _condition(root, "exp2b", 0.970 + 0.006 * rng.standard_normal(n), rng, floor=0.02)
    if "exp3" in names:
        grid = [(p, a) for p in range(3) for a in ALPHAS]
        levels = [0.996 - 0.008 * min(abs(a), abs(a - 1), abs(a - 0.5) + 0.3) ** 0.5 for _, a in grid]
        _condition(root, "exp3", levels, rng, extra=lambda i: {"pair": grid[i][0], "alpha": grid[i][1]})
    for name, level in (("exp4_no_attn", 0.979), ("exp4_no_mlp", 0.9949)):
        if name in names:
            _condition(root, name, level + 0.001 * rng.standard_normal(n), rng, ablation=name[5:])
    if "exp4_no_attn" in names and "exp4_no_mlp" in names:
        (root / "exp4_analysis.json").write_text(json.dumps({"correlations": [
            _corr("full", "no_attn", 0.41, 0.003, 0.38, 0.006), _corr("full", "no_mlp", 0.62, 1.2e-6, 0.6, 3e-6),
            _corr("no_attn", "no_mlp", 0.2, 0.16, 0.19, 0.18)]}))
    for name, scale in (("exp5_raw", 0.3), ("exp5_pca", 0.1)):
        if name in names:
            grid = [(t, f) for t in range(3) for f in FRACTIONS]
            _condition(root, name, [0.996 - scale * f ** 2 for _, f in grid], rng,
                       extra=lambda i, g=grid: {"fraction": g[i][1]})
    return root


def _corr(a, b, rho, p, r, pp):
    return {"a": a, "b": b, "spearman_rho": rho, "p_value": p, "pearson_r": r, "pearson_p": pp}


def _rows(name, root):
    return [json.loads(line) for line in (root / name / "problems.jsonl").read_text().splitlines()]


def _table_after(text, header_start):
    """Cells of the markdown table whose header line starts with `header_start`: list of rows of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def _close(cell, expected):
    return abs(float(cell) - expected) <= max(6e-5, 6e-3 * abs(expected))


def _check_figures(report, text):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for link in links:
        path = report.parent / link
        assert path.is_file() and path.stat().st_size > 1000, link
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
        with Image.open(path) as im:
            im.verify()
    assert "could not be drawn" not in text
    assert not [p for p in (report.parent / "figures").iterdir() if p.name.startswith(".")]  # no temp files left
    return links


@pytest.fixture(scope="module")
def full_suite(tmp_path_factory):
    root = _fake_suite(tmp_path_factory.mktemp("suite"), np.random.default_rng(0))
    return root, write_report(root)


def test_synthesis_has_every_experiment_with_its_medians(full_suite):
    root, report = full_suite
    assert report == root / "report.md"
    text = report.read_text()
    synthesis = text.split("## Synthesis", 1)[1].split("\n## ", 1)[0]
    rows = {r[0]: r for r in _table_after(synthesis, "| Experiment")}
    assert set(rows) == set(LABELS.values())
    for name, label in LABELS.items():
        data = _rows(name, root)
        for col, key in ((2, "cos"), (3, "cos_no_pos0"), (4, "mse"), (5, "floor_cos")):
            assert _close(rows[label][col], float(np.median([r[key] for r in data]))), (name, key, rows[label])
    assert "Missing from this run" not in text


def test_alpha_corruption_and_ablation_tables(full_suite):
    root, report = full_suite
    text = report.read_text()
    exp3 = _rows("exp3", root)
    table = _table_after(text, "| alpha")
    assert [float(r[0]) for r in table] == ALPHAS
    for r in table:
        a = float(r[0])
        assert _close(r[1], float(np.median([x["cos"] for x in exp3 if x["alpha"] == a])))
        assert r[5] == "3"
    table = _table_after(text, "| fraction")
    assert [float(r[0]) for r in table] == FRACTIONS
    raw, pca = _rows("exp5_raw", root), _rows("exp5_pca", root)
    for r in table:
        f = float(r[0])
        assert _close(r[1], float(np.median([x["cos"] for x in raw if x["fraction"] == f])))
        assert _close(r[4], float(np.median([x["cos"] for x in pca if x["fraction"] == f])))
    table = {r[0]: r for r in _table_after(text, "| Variant")}
    full = [x["cos"] for x in _rows("exp1", root)]
    no_attn = [x["cos"] for x in _rows("exp4_no_attn", root)]
    assert _close(table["No attention (FFN only)"][4], float(np.median(no_attn) - np.median(full)))
    assert table["No attention (FFN only)"][5].startswith(f"{sum(a > b for a, b in zip(no_attn, full))}/12")
    assert table["No attention (FFN only)"][6] == "0.410 (p 0.003)"
    analysis = json.loads((root / "exp1b" / "analysis.json").read_text())
    share = 100 * analysis["share_cos_gt_0_9"]
    assert f"share of optimised vectors with nearest-token cos > 0.9 (all positions) | {share:.1f}%" in text
    top = analysis["top_nearest_tokens"][0]
    assert f"`{json.dumps(top['token'])}` ×{top['count']}" in text or f"`` {json.dumps(top['token'])} `` ×{top['count']}" in text


def test_every_linked_figure_is_a_valid_png(full_suite):
    _, report = full_suite
    links = _check_figures(report, report.read_text())
    expected = {f"figures/hist_{n}.png" for n in LABELS} | {f"figures/{n}.png" for n in (
        "loss_curves", "cos_by_position", "alpha", "corruption", "ablation", "embedding_distance", "trajectories")}
    assert expected <= set(links)


def test_exp1_only_reports_what_is_missing(tmp_path):
    root = _fake_suite(tmp_path, np.random.default_rng(1), names=("exp1",))
    (tmp_path / ".exp2a.partial-123").mkdir()  # an interrupted write
    text = write_report(root).read_text()
    assert "Missing from this run" in text
    for name in ("exp1b/", "exp2a/", "exp2b/", "exp3/", "exp4_no_attn/", "exp5_pca/", "exp4_analysis.json"):
        assert f"`{name}`" in text.split("Missing from this run", 1)[1].split("\n", 1)[0]
    assert "Unfinished" in text and "`exp2a`" in text
    synthesis = text.split("## Synthesis", 1)[1].split("\n## ", 1)[0]
    assert [r[0] for r in _table_after(synthesis, "| Experiment")] == ["Exp 1"]
    assert "_Not in this run: Exp 3 (`exp3/`)._" in text
    _check_figures(root / "report.md", text)


def test_single_result_folder_is_accepted(tmp_path):
    _condition(tmp_path, "run1", [0.99, 0.98, 0.995], np.random.default_rng(2), experiment="exp1")
    report = write_report(tmp_path / "run1")
    assert report == tmp_path / "run1" / "report.md"
    text = report.read_text()
    assert "| Exp 1 | real activations |" in text and "one result folder" in text
    _check_figures(report, text)
    again = write_report(tmp_path / "run1").read_text()  # rerunnable: replaces report and figures in place
    assert again.split("\n", 3)[3] == text.split("\n", 3)[3]
    assert sorted(p.name for p in (tmp_path / "run1").iterdir() if p.name.startswith(".")) == []


def test_no_result_folders_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no result folders"):
        write_report(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")  # no problems.jsonl: not a result folder
    with pytest.raises(UserError, match="no result folders"):
        write_report(tmp_path)
    with pytest.raises(UserError, match="is not a folder"):
        write_report(tmp_path / "absent")
