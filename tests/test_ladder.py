"""The constraint ladder on a tiny saved model: verifiable folders, frontier table and figure, resume, CLI."""
import json

import pytest
import torch
from conftest import verify
from safetensors.torch import load_file

from softreach.cli import main
from softreach.ladder.config import LadderConfig, LadderSettings
from softreach.errors import UserError
from softreach.ladder import run_ladder, run_ladder_config
from softreach.plots.ladder import frontier_figure
from softreach.report.ladder import frontier_table, load_frontier
from softreach.targets import residuals_of_tokens

ALL = ["free", "norm_bound", "nearest_penalty", "mixture", "projected", "gcg", "causal", "projection",
       "random_tokens", "own_tokens"]
FOLDERS = ["free", "norm_bound_c1", "norm_bound_c4", "nearest_penalty_w0.1", "mixture_tau1", "mixture_tau1_argmax",
           "projected", "gcg", "causal", "projection", "random_tokens", "own_tokens"]
DISCRETE = ["mixture_tau1_argmax", "projected", "gcg", "causal", "projection", "random_tokens", "own_tokens"]
SETTINGS = dict(steps=8, norm_bounds=(1, 4), penalty_weights=(0.1,), gcg_budget=20, gcg_candidates=6, gcg_top_k=4,
                floor_draws=2)
LAYER = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama saved as a folder (verify_run loads it), its real-token targets."""
    from softreach.models import load_model
    from softreach.random_models import save_random_model

    root = tmp_path_factory.mktemp("ladder")
    save_random_model(root / "tiny", "llama", n_layers=2)
    lm = load_model(str(root / "tiny"), "cpu")
    tokens = torch.randint(2, 102, (3, 6), generator=torch.Generator().manual_seed(0))
    return root, lm, tokens, residuals_of_tokens(lm, tokens, LAYER)


@pytest.fixture(scope="module")
def ladder(tiny):
    root, lm, tokens, targets = tiny
    out = run_ladder(lm, LAYER, targets, tokens, ALL, LadderSettings(**SETTINGS), 0, root / "ladder")
    return out


def test_every_rung_setting_writes_a_folder_that_verify_run_accepts(ladder):
    assert sorted(p.name for p in ladder.iterdir() if p.is_dir()) == sorted(FOLDERS)
    for name, (code, text) in verify([ladder / f for f in FOLDERS]).items():
        assert code == 0, f"{name}: {text}"


def test_rows_carry_rung_fidelity_distance_downstream_and_cost(ladder):
    for name in FOLDERS:
        rows = [json.loads(x) for x in (ladder / name / "problems.jsonl").read_text().splitlines()]
        assert len(rows) == 3
        for r in rows:
            for key in ("rung", "setting", "cos", "cos_no_pos0", "mse", "mse_no_pos0", "nearest_cos", "norm_ratio",
                        "kl", "kl_no_pos0", "top1", "top1_no_pos0", "forward_passes", "seconds", "floor_cos"):
                assert key in r, (name, key)
            assert r["setting_name"] == name and r["discrete"] == (name in DISCRETE)
    gcg = [json.loads(x) for x in (ladder / "gcg" / "problems.jsonl").read_text().splitlines()]
    assert all(r["forward_passes"] <= 20 for r in gcg)
    # known answers: the discrete rungs say how much of the source tokens they recovered
    recovery = {name: [json.loads(x) for x in (ladder / name / "problems.jsonl").read_text().splitlines()]
                for name in DISCRETE}
    assert all(r["token_recovery"] == 1 and r["exact_recovery"] == 1 for r in recovery["own_tokens"])
    assert all(r["token_recovery"] == 1 and r["exact_recovery"] == 1 for r in recovery["causal"])
    assert all(r["exact_recovery"] == 0 and r["token_recovery"] < 0.5 for r in recovery["random_tokens"])
    assert not any("token_recovery" in json.loads(x)
                   for x in (ladder / "free" / "problems.jsonl").read_text().splitlines())
    config = json.loads((ladder / "norm_bound_c4" / "config.json").read_text())
    assert config["rung"] == "norm_bound" and config["setting"] == 4.0 and config["layer"] == LAYER


def test_discrete_folders_store_solution_ids_and_their_embeddings(tiny, ladder):
    _, lm, tokens, targets = tiny
    for name in FOLDERS:
        t = load_file(str(ladder / name / "tensors.safetensors"))
        assert torch.equal(t["tokens"], tokens)  # the targets' own tokens: real-text targets
        if name in DISCRETE:
            ids = t["solution_tokens"]
            torch.testing.assert_close(t["soft_prompt"], lm.embedding_matrix.detach()[ids])
            rows = [json.loads(x) for x in (ladder / name / "problems.jsonl").read_text().splitlines()]
            fresh = torch.nn.functional.cosine_similarity(residuals_of_tokens(lm, ids, LAYER), targets, dim=-1)
            torch.testing.assert_close(fresh.mean(1), torch.tensor([r["cos"] for r in rows]), rtol=1e-5, atol=1e-6)
            assert all(abs(r["nearest_cos"] - 1) < 1e-5 for r in rows)
        else:
            assert "solution_tokens" not in t


def test_own_tokens_reach_the_target(ladder):
    rows = [json.loads(x) for x in (ladder / "own_tokens" / "problems.jsonl").read_text().splitlines()]
    assert min(r["cos"] for r in rows) > 0.9999
    assert max(r["kl"] for r in rows) < 1e-6 and min(r["top1"] for r in rows) == 1.0


def test_frontier_json_table_and_figure(ladder, tmp_path):
    frontier = json.loads((ladder / "frontier.json").read_text())
    assert [p["name"] for p in frontier["points"]] == FOLDERS  # ladder order
    assert frontier["layer"] == LAYER and frontier["floor"]["cos"] is not None
    table = frontier_table(ladder)
    for name in FOLDERS:
        assert f"| {name} |" in table
    assert "Random-token floor" in table
    causal = next(line for line in table.splitlines() if line.startswith("| causal |"))
    assert "| 1.000 | 1.00 |" in causal  # tokens recovered, exactly recovered
    png = frontier_figure(load_frontier(ladder), tmp_path / "frontier.png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_an_identical_run_resumes_and_another_is_refused(tiny, ladder):
    _, lm, tokens, targets = tiny
    stamp = {n: (ladder / n / "problems.jsonl").stat().st_mtime_ns for n in FOLDERS}
    run_ladder(lm, LAYER, targets, tokens, ALL, LadderSettings(**SETTINGS), 0, ladder)
    assert stamp == {n: (ladder / n / "problems.jsonl").stat().st_mtime_ns for n in FOLDERS}
    with pytest.raises(UserError, match=r"was made by another \w+ \(differs in settings\.steps\)"):
        run_ladder(lm, LAYER, targets, tokens, ["free"], LadderSettings(**{**SETTINGS, "steps": 9}), 0, ladder)


def test_synthetic_targets_store_no_tokens_and_still_verify(tiny):
    root, lm, _, targets = tiny
    noisy = targets + 0.1 * torch.randn_like(targets)
    with pytest.raises(UserError, match="own_tokens"):
        run_ladder(lm, LAYER, noisy, None, ["own_tokens"], LadderSettings(**SETTINGS), 0, root / "synthetic")
    out = run_ladder(lm, LAYER, noisy, None, ["projection", "gcg"], LadderSettings(**SETTINGS), 0, root / "synthetic2")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["gcg", "projection"]  # free ran, unwritten
    for name in ("gcg", "projection"):
        assert "tokens" not in load_file(str(out / name / "tensors.safetensors"))
    for name, (code, text) in verify([out / "gcg", out / "projection"]).items():
        assert code == 0, f"{name}: {text}"


def test_cli_runs_the_ladder_on_real_text_targets(tiny, tmp_path, capsys):
    root = tiny[0]
    assert main(["ladder", "--model", str(root / "tiny"), "--layer", "2", "--targets", "2", "--seq-len", "6",
                 "--steps", "3", "--gcg-budget", "6", "--gcg-candidates", "2",
                 "--rungs", "free,norm_bound,gcg,own_tokens", "--norm-bounds", "2", "--floor-draws", "1",
                 "--out", str(tmp_path / "l"), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| norm_bound_c2 |" in printed and "| own_tokens |" in printed
    assert (tmp_path / "l" / "frontier.png").is_file()


def test_run_ladder_config_returns_the_folder_report_model_and_layer(tiny, tmp_path):
    root = tiny[0]
    cfg = LadderConfig(model=str(root / "tiny"), layer=2, targets=2, seq_len=6, device="cpu", rungs="own_tokens,free",
                       settings=LadderSettings(steps=2, floor_draws=1))
    done = run_ladder_config(cfg, tmp_path / "l", show_progress=False)
    assert done["out"] == tmp_path / "l" and done["report"] == tmp_path / "l" / "report.md"
    assert done["layer"] == 2 and done["lm"].n_layers == 2 and done["seconds"] > 0
    assert "| own_tokens |" in done["report"].read_text()
    assert sorted(p.name for p in done["out"].iterdir() if p.is_dir()) == ["free", "own_tokens"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a softreach ladder folder"):
        run_ladder_config(cfg, tmp_path / "other", show_progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("extra, message", [
    (["--rungs", "free,bogus"], "unknown rung 'bogus'"),
    (["--norm-bounds", "1,x"], "--norm-bounds needs numbers"),
    (["--gcg-budget", "1"], "--gcg-budget must be at least 2"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--targets", "0"], "--targets must be at least 1"),
    (["--layer", "9"], "layer 9 is outside 1..2"),
    (["--init", "zeros"], "init must be one of tokens, normal, got 'zeros'"),
    (["--schedule", "step"], "schedule must be one of cosine, constant, got 'step'"),
])
def test_cli_bad_input_is_a_one_line_user_error(tiny, tmp_path, capsys, extra, message):
    args = ["ladder", "--model", str(tiny[0] / "tiny"), "--out", str(tmp_path / "o"), "--device", "cpu", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()  # model loading may draw a progress bar first
    errors = [line for line in err if line.startswith("softreach: error: ")]
    assert len(errors) == 1 and message in errors[0] and err[-1] == errors[0]
    assert not (tmp_path / "o").exists()


def test_report_command_renders_a_ladder_folder(ladder, tmp_path):
    """`softreach report` on a ladder folder writes the frontier table and figure."""
    import shutil

    shutil.copytree(ladder, tmp_path / "lad")
    (tmp_path / "lad" / "frontier.png").unlink(missing_ok=True)
    assert main(["report", str(tmp_path / "lad")]) == 0
    text = (tmp_path / "lad" / "report.md").read_text()
    assert "| rung setting |" in text and (tmp_path / "lad" / "frontier.png").stat().st_size > 1000


def test_verify_recomputes_the_recovery_shares(ladder, tmp_path):
    import shutil

    out = shutil.copytree(ladder / "random_tokens", tmp_path / "random_tokens")
    lines = (out / "problems.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["token_recovery"] = 1.0  # claims to have found the source tokens
    lines[0] = json.dumps(rec)
    (out / "problems.jsonl").write_text("\n".join(lines) + "\n")
    code, text = verify([out])["random_tokens"]
    assert code == 1 and "row 0 token_recovery" in text
    code, text = verify([ladder / "causal"])["causal"]
    assert code == 0 and "token_recovery" in text and "exact_recovery" in text
