"""`softreach verify`: its own forward equals the engine's residual; edited folders fail, naming what is wrong."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from softreach.cli import main
from softreach.random_models import ARCHS, random_model
from softreach.residual import residual_at
from softreach.verification import hidden_state, verify


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ablation", ["none", "no_attn", "no_mlp"])
def test_hugging_face_hidden_state_equals_the_engine_residual_at_every_layer(arch, ablation):
    lm = random_model(arch)
    x = torch.randn(2, 7, lm.d_model, generator=torch.Generator().manual_seed(0))
    for layer in range(1, lm.n_layers + 1):  # the last layer too, where hidden_states has the final norm applied
        ref = residual_at(lm.model, layer, inputs_embeds=x, ablation=ablation)
        assert torch.allclose(hidden_state(lm.model, layer, x, ablation), ref, atol=1e-5), (layer, ablation)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A budget-1 Exp 1 folder of a tiny saved model: real targets (tokens saved), copy baseline, restarts."""
    from softreach.random_models import save_random_model

    root = tmp_path_factory.mktemp("verify")
    model = save_random_model(root / "tiny", "llama", n_layers=3)
    out = root / "exp1_b1"
    assert main(["run", "exp1", "--model", str(model), "--layer", "2", "--targets", "3", "--restarts", "2",
                 "--steps", "15", "--seq-len", "6", "--floor-draws", "1", "--norm-budget", "1", "--no-progress",
                 "--out", str(out)]) == 0
    return out


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


def _edit_row(out, row, **fields):
    lines = (out / "problems.jsonl").read_text().splitlines()
    rec = json.loads(lines[row])
    rec.update(fields)
    lines[row] = json.dumps(rec)
    (out / "problems.jsonl").write_text("\n".join(lines) + "\n")


def _edit_tensor(out, name, fn):
    t = load_file(str(out / "tensors.safetensors"))
    t[name] = fn(t[name])
    save_file(t, str(out / "tensors.safetensors"))


def _verify(capsys, *paths):
    code = main(["verify", *map(str, paths), "--no-progress"])
    return code, capsys.readouterr().out


def test_an_untouched_folder_passes_with_one_line(folder, capsys):
    code, out = _verify(capsys, folder)
    assert code == 0, out
    first = out.splitlines()[0]
    assert first.startswith(f"ok   {folder}: 3/3 rows")
    for name in ("cos", "mse", "cos_no_pos0", "copy baseline", "norm_budget", "tokens", "restart_cos", "fvu",
                 "floor_cos", "floor_cos_no_pos0"):
        assert name in first


def test_an_edited_cosine_fails_naming_folder_row_and_field(folder, tmp_path, capsys):
    out = _copy(folder, tmp_path)
    row = json.loads((out / "problems.jsonl").read_text().splitlines()[1])
    _edit_row(out, 1, cos=row["cos"] - 0.01)
    code, text = _verify(capsys, out)
    assert code == 1 and f"FAIL {out} row 1 cos: reported" in text
    assert "row 0" not in text and "row 2" not in text


def test_the_floor_is_recomputed_from_its_saved_draws(folder, tmp_path, capsys):
    draws = load_file(str(folder / "tensors.safetensors"))["floor_tokens"]
    assert draws.shape == (3, 1, 6)  # [targets, draws, T]
    out = _copy(folder, tmp_path / "edited_row")
    row = json.loads((out / "problems.jsonl").read_text().splitlines()[2])
    _edit_row(out, 2, floor_cos=row["floor_cos"] + 0.01)
    code, text = _verify(capsys, out)
    assert code == 1 and f"FAIL {out} row 2 floor_cos: reported" in text and "floor_cos_no_pos0" not in text
    other = _copy(folder, tmp_path / "edited_draws")  # other draws than the ones the floor was computed from
    _edit_tensor(other, "floor_tokens", lambda t: torch.cat([t[1:], t[:1]]))
    code, text = _verify(capsys, other)
    assert code == 1 and "row 0 floor_cos: reported" in text and "row 0 floor_cos_no_pos0: reported" in text


def test_the_near_miss_is_recomputed_from_its_saved_draws(tmp_path, capsys):
    from softreach.random_models import save_random_model

    model = save_random_model(tmp_path / "tiny", "llama", n_layers=3)
    out = tmp_path / "steer"
    assert main(["run", "steer", "--model", str(model), "--layer", "2", "--layout", "suffix", "--before", "4",
                 "--after", "2", "--soft", "3", "--kind", "real", "--targets", "2", "--steps", "5",
                 "--floor-draws", "1", "--no-progress", "--out", str(out)]) == 0
    t = load_file(str(out / "tensors.safetensors"))
    assert t["near_miss_tokens"].shape == (2, 4, 3) and t["floor_tokens"].shape == (2, 1, 3)  # [N, draws, K]
    code, text = _verify(capsys, out)
    assert code == 0 and "near_miss_cos" in text and "floor_cos" in text, text
    row = json.loads((out / "problems.jsonl").read_text().splitlines()[1])
    _edit_row(out, 1, near_miss_cos=row["near_miss_cos"] - 0.01)
    code, text = _verify(capsys, out)
    assert code == 1 and f"FAIL {out} row 1 near_miss_cos: reported" in text


def test_a_soft_prompt_past_its_budget_fails(folder, tmp_path, capsys):
    out = _copy(folder, tmp_path)
    _edit_tensor(out, "soft_prompt", lambda s: torch.cat([s[:2], 1.5 * s[2:]]))
    code, text = _verify(capsys, out)
    assert code == 1 and f"FAIL {out} row 2 norm_budget" in text


def test_a_copy_baseline_weaker_than_a_plain_copy_fails(folder, tmp_path, capsys):
    out = _copy(folder, tmp_path)
    _edit_row(out, 0, copy_cos=-0.5)
    code, text = _verify(capsys, out)
    assert code == 1 and f"FAIL {out} row 0 copy_cos: reported -0.5" in text


def test_a_target_its_saved_tokens_do_not_make_fails(folder, tmp_path, capsys):
    out = _copy(folder, tmp_path)
    _edit_tensor(out, "tokens", lambda t: torch.cat([t[:1], t[1:2].roll(1, dims=1), t[2:]]))
    code, text = _verify(capsys, out)
    assert code == 1 and f"FAIL {out} row 1 tokens" in text


def test_discrete_inputs_must_be_their_tokens_embeddings(folder, tmp_path, capsys):
    out = _copy(folder, tmp_path)
    t = load_file(str(out / "tensors.safetensors"))
    t["solution_tokens"] = t["tokens"].clone()  # ids whose embeddings are not the saved soft prompt
    save_file(t, str(out / "tensors.safetensors"))
    code, text = _verify(capsys, out)
    assert code == 1 and "solution_tokens" in text


def test_a_parent_folder_checks_every_result_folder_below_it_and_max_problems(folder, tmp_path, capsys):
    parent = tmp_path / "suite"
    shutil.copytree(folder, parent / "a")
    shutil.copytree(folder, parent / "b")
    shutil.copytree(folder, parent / ".checkpoints" / "c")  # hidden folders are not results
    checks = verify(parent, max_problems=2)
    assert [c.folder.name for c in checks] == ["a", "b"] and all(c.ok and c.rows_checked == 2 for c in checks)
    code, text = _verify(capsys, parent)
    assert code == 0 and "2 of 2 result folders agree" in text


def test_a_path_without_result_folders_is_exit_2_with_one_line(folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2
    assert main(["verify", str(tmp_path / "missing")]) == 2
    assert main(["verify", str(folder), "--device", "tpu"]) == 2
    assert main(["verify", str(folder), "--tol", "-1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and "holds no result folder" in err[0] and "is not a folder" in err[1]
    assert "unknown device" in err[2] and "--tol must be positive" in err[3]
