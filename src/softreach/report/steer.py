"""The report of a steer folder: one table and one figure per sweep (K, M, distance), each point against its
baselines (random tokens in the slots, the text's own tokens) with convergence and the downstream check;
and the smallest K that reaches the stated fidelity per text (a distance between the text and its target)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..results.folder import atomic_write_text, is_done, read_json, read_problems
from ..stats import field_mean
from .format import fmt, pct, table

SWEEP_TITLES = {"k": ("Fidelity against the number of soft slots K", "K"),
                "m": ("Fidelity against the number of steered positions M", "M"),
                "distance": ("Fidelity against the distance from the slots", "distance")}
CELLS = {  # column -> how a condition's problems fill it (means over problems unless said)
    "cos (mean)": lambda rows: fmt(field_mean(rows, "cos")),
    "cos (median)": lambda rows: fmt(statistics.median(r["cos"] for r in rows)),
    "random tokens": lambda rows: fmt(field_mean(rows, "floor_cos")),
    "own tokens": lambda rows: fmt(field_mean(rows, "own_cos")),
    "source tokens": lambda rows: fmt(field_mean(rows, "source_cos")),
    "source, one slot random": lambda rows: fmt(field_mean(rows, "near_miss_cos")),
    "reached": lambda rows: pct(field_mean(rows, "reached")),
    "converged": lambda rows: pct(field_mean(rows, "converged")),
    "KL": lambda rows: fmt(field_mean(rows, "kl")),
    "top-1": lambda rows: fmt(field_mean(rows, "top1"), 2),
    "own KL": lambda rows: fmt(field_mean(rows, "own_kl")),
    "steps": lambda rows: fmt(field_mean(rows, "steps_run"), 0),
    "tokens recovered": lambda rows: fmt(field_mean(rows, "token_recovery"), 3),
    "forward passes": lambda rows: fmt(field_mean(rows, "forward_passes" if any("forward_passes" in r for r in rows)
                                                  else "steps_run"), 0),
}
COLUMNS = ["cos (mean)", "cos (median)", "random tokens", "own tokens", "reached", "converged", "KL", "top-1",
           "own KL", "steps"]
RUNG_COLUMNS = ["cos (mean)", "cos (median)", "random tokens", "own tokens", "reached", "tokens recovered", "KL", "top-1",
                "forward passes"]


def with_known_answer(columns: list[str], rows: list[dict]) -> list[str]:
    """`columns` with the known answer's baselines after "own tokens" where the rows have them (real targets)."""
    extra = [c for c, key in (("source tokens", "source_cos"), ("source, one slot random", "near_miss_cos"))
             if any(key in r for r in rows)]
    at = columns.index("own tokens") + 1
    return columns[:at] + extra + columns[at:]


def point_row(rows: list[dict], columns: list[str] = COLUMNS) -> list[str]:
    """One table row of a condition's problems."""
    return [CELLS[c](rows) for c in columns]


def load_points(out: str | Path) -> list[tuple[str, dict, list[dict]]]:
    """Every finished point of a steer folder: (folder name, config, problems), sweeps in their order."""
    out = Path(out)
    found = [(p.name, read_json(p / "config.json"), read_problems(p)) for p in out.iterdir()
             if p.is_dir() and is_done(p)]
    order = {"k": 0, "m": 1, "distance": 2}

    def key(item):
        value = item[1].get("sweep_value")
        number = math.inf if value == "all" else float(value) if value is not None else 0.0
        rank = order.get(item[1].get("sweep"), 4 if item[1].get("rung") else 3)
        return rank, number, item[0]

    return sorted(found, key=key)


def points_table(out: str | Path, single: bool = False) -> str:
    """The table of a result folder (single) or of every point of a steer folder, as markdown."""
    out = Path(out)
    found = [("steer", read_problems(out))] if single else [(name, problems) for name, _, problems in load_points(out)]
    columns = with_known_answer(COLUMNS, [r for _, problems in found for r in problems])
    rows = [[name] + point_row(problems, columns) for name, problems in found]
    return "\n".join(table(["condition" if single else "point"] + columns, rows))


def smallest_k(points: list[tuple[str, dict, list[dict]]], fidelity: float) -> list[int | None]:
    """Per problem of the K sweep: the smallest K whose cosine reaches `fidelity` (None: no K did)."""
    ks = [(cfg["sweep_value"], rows) for _, cfg, rows in points if cfg.get("sweep") == "k"]
    if not ks:
        return []
    out: list[int | None] = []
    for i in range(len(ks[0][1])):
        hit = [k for k, rows in sorted(ks) if rows[i]["cos"] >= fidelity]
        out.append(hit[0] if hit else None)
    return out


def rung_section(out: Path, points: list[tuple[str, dict, list[dict]]]) -> list[str]:
    """Real tokens in the slots against the continuous solution: the frontier table, and cosine against the
    vocabulary percent where several were run (table and figure)."""
    from ..plots.steer import plot_vocab

    base = [p for p in points if p[0] == "soft"]
    rungs = [p for p in points if p[1].get("rung")]
    if not base or not rungs:
        return []
    columns = with_known_answer(RUNG_COLUMNS, base[0][2])
    header = ["inputs in the slots", "vocabulary"] + columns
    rows = [["soft vectors (continuous)", "-"] + point_row(base[0][2], columns)]
    for name, c, problems in sorted(rungs, key=lambda p: (-p[1]["vocab_percent"], p[0])):
        rows.append([c["rung"], f"{c['vocab_percent']:g}%"] + point_row(problems, columns))
    lines = ["## Real tokens in the slots", "",
             "The ladder's discrete rungs restricted to the soft slots (the fixed text unchanged): projection (nearest "
             "token of each continuous slot vector), projected (PEZ), gcg (token search from the text's own tokens), "
             "causal (the slots searched in order from the same start), "
             "each over the p% most frequent corpus tokens.", "", *table(header, rows), ""]
    percents = sorted({c["vocab_percent"] for _, c, _ in rungs})
    if len(percents) > 1:
        by = {(c["rung"], c["vocab_percent"]): problems for _, c, problems in rungs}
        names = [r for r in ("projection", "projected", "gcg", "causal") if any(k[0] == r for k in by)]
        vrows = [[f"{p:g}%"] + [fmt(field_mean(by[(r, p)], "cos")) if (r, p) in by else "-" for r in names]
                 for p in percents]
        figure = plot_vocab(by, base[0][2], out / "steer_vocab.png")
        lines += ["### Vocabulary density", "", *table(["vocabulary"] + names, vrows), "",
                  f"![cosine against vocabulary]({figure.name})", ""]
    return lines


def write_steer_report(out: str | Path) -> Path:
    """report.md and one figure per sweep in a steer folder (rewritten from the point folders)."""
    from ..plots.steer import plot_sweep

    out = Path(out)
    cfg = read_json(out / "steer.json")["config"]
    points = load_points(out)
    first = points[0][1] if points else {}
    model = first.get("model", {})
    lines = [f"# Steering fixed text from soft slots ({cfg['layout']})", "",
             f"- model `{model.get('source', cfg['model'])}`" + (f" (`{model['gguf_file']}`)" if model.get("gguf_file")
                                                                  else "") + f", layer {first.get('layer', '?')}",
             f"- {first.get('n_before', '?')} fixed tokens, K soft slots, {first.get('n_after', '?')} fixed tokens; "
             f"{cfg['kind']} targets" + (f" (c = {', '.join(f'{c:g}' for c in cfg['coefficients'])}, "
                                         f"{cfg['direction']} direction)" if cfg["kind"] == "steered" else "")
             + f", {cfg['targets']} texts, {cfg['restarts']} restart(s), at most {cfg['optim']['steps']} steps",
             f"- norm budget {cfg['norm_budget']} x the mean token-embedding norm; fidelity threshold cos >= "
             f"{cfg['fidelity']}",
             "- baselines: random tokens in the slots (the floor) and the text's own tokens there (the clean text); "
             "KL and top-1 compare next-token predictions at the steered positions with the target's "
             "(the target patched in at layer L). The copy route does not exist here: the steered positions hold "
             "fixed text.", ""]
    for sweep, (title, xlabel) in SWEEP_TITLES.items():
        chosen = [p for p in points if p[1].get("sweep") == sweep]
        if not chosen:
            continue
        columns = with_known_answer(COLUMNS, [r for _, _, problems in chosen for r in problems])
        rows = [[str(c["sweep_value"])] + point_row(problems, columns) for _, c, problems in chosen]
        figure = plot_sweep(chosen, out / f"steer_{sweep}.png", title, xlabel)
        lines += [f"## {title}", "", *table([xlabel] + columns, rows), "", f"![{title}]({figure.name})", ""]
        if sweep == "k":
            ks = smallest_k(points, cfg["fidelity"])
            found = [k for k in ks if k is not None]
            lines += [f"Smallest K reaching cos >= {cfg['fidelity']}: " + ", ".join("-" if k is None else str(k) for k in ks)
                      + f" (median over texts that reached it: {statistics.median(found) if found else '-'}; "
                      f"{len(ks) - len(found)} of {len(ks)} never did).", ""]
    lines += rung_section(out, points)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
