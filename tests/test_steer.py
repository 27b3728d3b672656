"""`softreach run steer`: soft slots around fixed text, on tiny random models (saved, so verify_run can load them)."""
import dataclasses
import json
import re
import shutil

import pytest
import torch
from conftest import verify
from safetensors.torch import load_file

import softreach as sr
from softreach.cli import main
from softreach.errors import UserError
from softreach.floor import near_miss, one_slot_wrong
from softreach.frame import frame_residual_of_tokens
from softreach.random_models import random_model
from softreach.steer.config import SteerConfig
from softreach.steer.run import points, run_steer
from softreach.steer.targets import build_targets
from softreach.steer.template import Texts, draw_texts, steered_positions


def _args(model_dir, out, *extra):
    return ["run", "steer", "--model", str(model_dir), "--targets", "2", "--steps", "12", "--floor-draws", "1",
            "--no-progress", "--out", str(out), *extra]


def test_steered_positions():
    assert steered_positions(5, 3, 10, "last", None).tolist() == [17]
    assert steered_positions(5, 3, 10, "last:3", None).tolist() == [15, 16, 17]
    assert steered_positions(5, 3, 10, "all", None).tolist() == list(range(8, 18))
    assert steered_positions(0, 4, 10, "last", 1).tolist() == [4]  # the token right after the slots
    assert steered_positions(0, 4, 10, "last:2", 9).tolist() == [12, 13]
    with pytest.raises(UserError, match="run past"):
        steered_positions(0, 4, 10, "last:2", 10)
    with pytest.raises(UserError, match="only 10 fixed tokens"):
        steered_positions(0, 4, 10, "last:11", None)
    with pytest.raises(UserError, match="--steer must be"):
        SteerConfig(steer="first")


def test_texts_are_contiguous_for_every_k():
    tokens = torch.arange(40).view(2, 20)  # Cb 4, K_max 6, Ca 10
    texts = Texts(tokens, 4, 6, 10)
    for k in (1, 3, 6):
        frame = texts.frame(k, steered_positions(4, k, 10, "last", None))
        joined = torch.cat([frame.before, texts.own_tokens(k), frame.after], 1)
        assert torch.equal(joined, tokens[:, 6 - k :])
        assert torch.equal(frame.after, tokens[:, 10:])  # the steered text is the same for every K


@pytest.mark.parametrize("kind", ["steered", "real", "random"])
def test_targets_of_each_kind(kind):
    lm = random_model("llama")
    cfg = SteerConfig(kind=kind, before=3, after=6, soft=2, steer="last:3", targets=2, coefficients=(0.5, 2.0))
    texts, donors = draw_texts(lm, cfg.corpus, 3, 2, 6, 2, 0, donors=2 if kind == "real" else 0)
    frame = texts.frame(2, steered_positions(3, 2, 6, cfg.steer, None))
    pr = build_targets(lm, 2, cfg, texts, donors, frame)
    clean = frame_residual_of_tokens(lm.model, 2, pr.frame, pr.own_tokens)  # [R, P, d]
    if kind == "steered":
        assert pr.target.shape == (4, 3, lm.d_model) and pr.coefficient == [0.5, 2.0, 0.5, 2.0]
        for row, c in enumerate(pr.coefficient):
            step = (pr.target[row] - clean[row]).norm(dim=-1)
            torch.testing.assert_close(step, c * clean[row].norm(dim=-1), rtol=1e-4, atol=1e-4)
    elif kind == "real":
        again = frame_residual_of_tokens(lm.model, 2, pr.frame, pr.source_tokens)
        torch.testing.assert_close(again, pr.target)
        assert not torch.equal(pr.source_tokens, pr.own_tokens)
    else:
        torch.testing.assert_close(pr.target.norm(dim=-1), clean.norm(dim=-1), rtol=1e-4, atol=1e-4)


def test_result_is_never_below_the_texts_own_tokens():
    lm = random_model("gpt_neox")
    cfg = sr.SteerConfig(before=4, after=8, soft=3, steer="last:2", targets=3, norm_budget="inf", floor_draws=1,
                      optim=dict(steps=15))
    res, config = sr.run_steer(cfg, out=None, lm=lm, show_progress=False)["results"][""]  # in memory: no folder
    assert config["target_positions"] == [13, 14]
    for p in res.problems:
        assert p["cos"] >= p["own_cos"] - 1e-5
        assert {"floor_cos", "kl", "top1", "verdict", "steps_run", "coefficient"} <= set(p)


@pytest.mark.parametrize("layout, extra", [
    ("prefix", ["--after", "10", "--kind", "real", "--steer", "all"]),
    ("infix", ["--before", "5", "--after", "8", "--steer", "last:3", "--coefficients", "0.5,1"]),
    ("suffix", ["--before", "12", "--after", "3", "--kind", "random", "--restarts", "2"]),
])
def test_run_steer_folder_passes_verify_run(tiny_model_dir, tmp_path, layout, extra):
    out = tmp_path / layout
    assert main(_args(tiny_model_dir, out, "--layout", layout, "--soft", "3", *extra)) == 0
    code, text = verify([out])[layout]
    assert code == 0, text
    t = load_file(str(out / "tensors.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    n_before, n_after = cfg["n_before"], cfg["n_after"]
    assert ("context_before" in t) == (n_before > 0) and t["context_after"].shape[1] == n_after
    assert t["soft_prompt"].shape[1] == 3 and t["target"].shape[1] == t["target_positions"].numel()
    assert int(t["target_positions"].min()) >= n_before + 3  # steered positions are fixed text after the slots
    assert ("tokens" in t) == (layout == "prefix")  # real targets save the tokens that make them
    assert cfg["norm_budget"] == pytest.approx(cfg["token_norm"])  # budget 1 by default, stored absolute
    assert t["soft_prompt"].norm(dim=-1).max() <= cfg["norm_budget"] * (1 + 1e-5)


def test_sweeps_write_verifiable_points_a_report_and_resume(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = _args(tiny_model_dir, out, "--after", "12", "--soft", "2", "--sweep", "k,m,distance", "--k-values", "1,3",
                 "--m-values", "1,4,all", "--distances", "1,6,40")
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["distance1", "distance6", "k1", "k3", "m1", "m4", "m_all"]  # distance 40 does not fit
    codes = verify([out / n for n in names])
    assert all(code == 0 for code, _ in codes.values()), codes
    report = (out / "report.md").read_text()
    for heading in ("number of soft slots K", "number of steered positions M", "distance from the slots"):
        assert heading in report
    assert "Smallest K reaching" in report
    assert all((out / f"steer_{s}.png").stat().st_size > 1000 for s in ("k", "m", "distance"))
    stamp = (out / "k1" / "problems.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # resumes: every point is done, nothing is recomputed
    assert (out / "k1" / "problems.jsonl").stat().st_mtime_ns == stamp
    before = (out / "k3" / "problems.jsonl").read_bytes(), (out / "k3" / "tensors.safetensors").read_bytes()
    shutil.rmtree(out / "k3")  # as if the run had been killed before k3 was written
    assert main(args) == 0
    assert ((out / "k3" / "problems.jsonl").read_bytes(), (out / "k3" / "tensors.safetensors").read_bytes()) == before
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and "## Fidelity against" in (out / "report.md").read_text()
    assert main(args[:-1] + ["1,6"]) == 2  # another config never resumes this folder
    assert "made by another config" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--steer", "last:50"], "only 10 fixed tokens follow"),
    (["--after", "10", "--distance", "11"], "run past"),
    (["--layout", "middle"], "layout must be one of"),
    (["--after", "100"], "exceed the model's 64"),
    (["--direction", "mean_diff"], "needs --direction-a"),
    (["--sweep", "k,width"], "unknown sweep 'width'"),
    (["--m-values", "0"], "--m-values takes positive integers"),
])
def test_bad_steer_input_is_one_line_exit_2_and_no_folder(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code = main(_args(tiny_model_dir, out, "--after", "10", *extra))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("softreach")]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_an_existing_folder_is_not_replaced_without_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(_args(tiny_model_dir, out, "--after", "6")) == 2
    assert (out / "keep.txt").read_text() == "mine"


def test_points_of_a_sweep_drop_what_does_not_fit():
    cfg = SteerConfig(sweep="m,distance", m_values=("1", "5", "all"), distances=(1, 3, 9))
    names = [p.name for p in points(cfg, n_after=4)]
    assert names == ["m1", "m_all", "distance1", "distance3"]


def test_mean_difference_direction(tmp_path):
    from softreach.steer.targets import mean_difference

    lm = random_model("llama")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aaaa bbbb " * 200)
    b.write_text("zzzz yyyy " * 200)
    u = mean_difference(lm, 2, str(a), str(b), seq_len=8)
    assert u.shape == (lm.d_model,) and abs(float(u.norm()) - 1) < 1e-5
    v = mean_difference(lm, 2, str(b), str(a), seq_len=8)
    torch.testing.assert_close(u, -v)


def test_discrete_rungs_in_the_slots_with_vocabulary_density(tiny_model_dir, tmp_path):
    out = tmp_path / "rungs"
    args = _args(tiny_model_dir, out, "--layout", "infix", "--before", "4", "--after", "6", "--soft", "3",
                 "--kind", "real", "--rungs", "projection,gcg,projected,causal", "--vocab-percent", "20,100",
                 "--gcg-budget", "12", "--causal-candidates", "8")
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["causal", "causal_v20", "gcg", "gcg_v20", "projected", "projected_v20", "projection",
                     "projection_v20", "soft"]
    codes = verify([out / n for n in names])
    assert all(code == 0 for code, _ in codes.values()), codes
    assert all("near_miss_cos" in text and "floor_cos" in text for _, text in codes.values())  # from the saved draws
    for name in ("gcg_v20", "projection_v20", "projected_v20", "causal_v20"):
        cfg = json.loads((out / name / "config.json").read_text())
        assert cfg["norm_budget"] is None and cfg["vocab_percent"] == 20 and cfg["discrete"]
        t = load_file(str(out / name / "tensors.safetensors"))
        rows = [json.loads(line) for line in (out / name / "problems.jsonl").read_text().splitlines()]
        allowed = rows[0]["vocab_size"]
        assert allowed < 100 and t["solution_tokens"].shape == (2, 3)
        # real targets: the share of the source tokens the rung found, checked against the saved ids
        same = (t["solution_tokens"] == t["tokens"]).float()
        assert [r["token_recovery"] for r in rows] == pytest.approx(same.mean(1).tolist())
        assert all(r["near_miss_cos"] < r["source_cos"] for r in rows)  # the known answer, one slot wrong
    report = (out / "report.md").read_text()
    assert "| source tokens | source, one slot random |" in report
    assert "## Real tokens in the slots" in report and "### Vocabulary density" in report
    assert (out / "steer_vocab.png").stat().st_size > 1000
    assert main(args) == 0  # resumes with nothing left to do


def test_a_point_already_solved_is_copied_not_recomputed(tiny_model_dir, tmp_path):
    out = tmp_path / "dup"
    assert main(_args(tiny_model_dir, out, "--after", "6", "--soft", "2", "--sweep", "k,m", "--k-values", "2",
                      "--m-values", "1,2")) == 0
    k2, m1 = (json.loads((out / n / "problems.jsonl").read_text().splitlines()[0]) for n in ("k2", "m1"))
    assert k2 == m1  # K = 2, last position: the same problems
    assert json.loads((out / "m1" / "config.json").read_text())["copied_from"] == "k2"
    assert verify([out / "m1"])["m1"][0] == 0


def test_steer_keeps_its_own_optimiser_defaults_when_one_is_overridden(capsys):
    from softreach.cli.args import settings
    from softreach.cli.main import build_parser
    from softreach.steer.config import STEER_OPTIM

    a = build_parser().parse_args(["run", "steer", "--out", "x", "--steps", "50", "--set", "optim.tol=0.01"])
    cfg = settings(a, SteerConfig)
    assert cfg.optim.steps == 50 and cfg.optim.tol == 0.01
    assert cfg.optim.lr == STEER_OPTIM["lr"] and cfg.optim.skip_pos0 is False  # not OptimConfig's 0.2 / True
    with pytest.raises(SystemExit):
        main(["run", "steer", "--help"])
    shown = re.search(r"--lr LR\s+Adam learning rate.*?\(default: ([^)]*)\)", capsys.readouterr().out, re.S)
    assert float(shown.group(1)) == STEER_OPTIM["lr"]


def test_the_same_seed_gives_the_same_texts_whichever_sweeps_run():
    lm = random_model("gpt_neox")
    cfg = SteerConfig(after=6, soft=2, targets=2, k_values=(1, 2, 3), floor_draws=1, downstream=False,
                      optim=dict(steps=5))
    alone = run_steer(cfg, None, lm=lm, show_progress=False)["results"][""][0].problems
    swept = run_steer(dataclasses.replace(cfg, sweep=("k",)), None, lm=lm, show_progress=False)["results"]["k2"][0]
    assert [p["cos"] for p in alone] == [p["cos"] for p in swept.problems]


def test_one_slot_wrong_changes_exactly_one_slot_to_another_allowed_token():
    g = torch.Generator().manual_seed(0)
    vocab = torch.tensor([2, 3, 5])  # a tiny vocabulary: the source token is often drawn and must be skipped
    source = torch.tensor([[2, 3, 5, 2], [5, 5, 5, 5], [3, 2, 3, 9]])  # 9: a source token outside the vocabulary
    ids = one_slot_wrong(source, vocab, 200, g)  # [200, 3, 4]
    differ = ids != source.unsqueeze(0)
    assert ids.shape == (200, 3, 4) and (differ.sum(2) == 1).all()
    assert torch.isin(ids[differ], vocab).all()
    assert set(ids[:, 1][differ[:, 1]].tolist()) == {2, 3}  # every other token is drawn, never the source's 5
    assert set(differ.nonzero()[:, 2].tolist()) == {0, 1, 2, 3}  # every slot is drawn


def test_near_miss_is_the_mean_cosine_of_the_source_with_one_slot_wrong():
    lm = random_model("llama")
    cfg = SteerConfig(kind="real", before=3, after=6, soft=3, steer="last:2", targets=2)
    texts, donors = draw_texts(lm, cfg.corpus, 3, 3, 6, 2, 0, donors=2)
    pr = build_targets(lm, 2, cfg, texts, donors, texts.frame(3, steered_positions(3, 3, 6, cfg.steer, None)))
    near = near_miss(lm, 2, pr.frame, pr.source_tokens, pr.target, seed=7, draws=5)
    got = near["cos"]
    ids = one_slot_wrong(pr.source_tokens, lm.ordinary_token_ids(), 5, torch.Generator().manual_seed(7 + 130363))
    assert torch.equal(near["tokens"], ids.transpose(0, 1))  # the draws it returns are the ones it scored
    for i in range(2):  # one problem, one draw at a time
        cos = [torch.nn.functional.cosine_similarity(
            frame_residual_of_tokens(lm.model, 2, pr.frame.select(slice(i, i + 1)), ids[d, i:i + 1])[0],
            pr.target[i], dim=-1).mean() for d in range(5)]
        assert float(got[i]) == pytest.approx(float(torch.stack(cos).mean()), abs=1e-5)
        assert float(got[i]) < 1 - 1e-4  # the source itself gives 1
