"""`softreach report DIR` over a folder of several runs: a contents list, and steer folders' sweeps side by side."""
import pytest

from softreach.cli import main
from softreach.report.collection import is_collection, run_kind


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two steer K sweeps (real and random targets) and an Exp 1 result folder side by side, on a tiny model."""
    from softreach.random_models import save_random_model

    base = tmp_path_factory.mktemp("collection")
    model = save_random_model(base / "tiny", "gpt_neox", n_layers=2)
    root = base / "runs"
    for kind in ("real", "random"):
        assert main(["run", "steer", "--model", str(model), "--targets", "2", "--steps", "8", "--floor-draws", "1",
                     "--layout", "suffix", "--before", "5", "--after", "2", "--kind", kind, "--sweep", "k",
                     "--k-values", "1,2", "--no-progress", "--out", str(root / f"steer-{kind}")]) == 0
    assert main(["run", "exp1", "--model", str(model), "--layer", "1", "--targets", "2", "--steps", "5",
                 "--seq-len", "4", "--floor-draws", "1", "--no-progress", "--out", str(root / "exp1")]) == 0
    return root


def test_a_folder_of_runs_gets_one_report_with_contents_and_a_line_per_kind(root, capsys):
    assert [run_kind(root / n) for n in ("steer-real", "steer-random", "exp1")] == ["steer", "steer", "result"]
    assert run_kind(root) == "suite" and is_collection(root)  # a result folder beside steer folders
    (root / "steer-real" / "report.md").unlink()
    assert main(["report", str(root)]) == 0
    text = (root / "report.md").read_text()
    for link in ("[exp1](exp1/report.md): result", "[steer-real](steer-real/report.md): steer",
                 "[steer-random](steer-random/report.md): steer", "(#steering-across-folders)"):
        assert link in text
    assert (root / "steer-real" / "report.md").is_file()  # every run's own report is rewritten
    table = [line for line in text.splitlines() if line.startswith("| suffix")]
    labels = [line.split(":")[0] for line in table]
    assert labels == ["| suffix, random, budget 1"] * 4 + ["| suffix, real, budget 1"] * 5  # folders by name
    assert table[-2].startswith("| suffix, real, budget 1: source tokens, one slot random")  # the known answer's scale
    assert "soft slots (converged)" in table[0] and table[0].count("%)") == 2  # K = 1 and 2, each with its share
    assert (root / "steer_k_all.png").stat().st_size > 5000
    assert "![Fidelity against the number of soft slots K](steer_k_all.png)" in text


def test_the_table_holds_each_folder_s_means(root):
    import json

    rows = [json.loads(line) for line in (root / "steer-random" / "k2" / "problems.jsonl").read_text().splitlines()]
    mean = sum(r["cos"] for r in rows) / len(rows)
    line = next(line for line in (root / "report.md").read_text().splitlines()
                if line.startswith("| suffix, random, budget 1: soft slots"))
    assert line.split("|")[3].strip().startswith(f"{mean:.4f}")


def test_a_folder_with_no_run_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to report" in err
    assert not (tmp_path / "report.md").exists()
