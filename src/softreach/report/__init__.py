"""The markdown report of a suite folder (or of one result folder), mirroring the research log.

`write_report(run_dir)` reads whichever result folders exist, writes `report.md` and `figures/*.png`
into run_dir, and says in the report what is missing. Every statistic is recomputed from problems.jsonl
(one row per target), so each number can be checked against the saved rows.

Sections follow the experiment registry (experiments/registry.py): its order (the log's) and headings.
Suite layout read here (any subset may exist; the contract is docs/result-folders.md):
    exp1/ [trajectories.json]   exp1b/ [analysis.json]   exp2a/  exp2b/   exp3/ (rows: pair, alpha)
    exp4_no_attn/  exp4_no_mlp/  exp4_analysis.json      exp5_raw/  exp5_pca/ (rows: fraction)
Each may also exist at input-norm budgets (units of the mean token-embedding norm): the free folder keeps
its name, a budgeted one gets a suffix (`exp1_b1`, `exp4_no_mlp_b1`; Exp 4 correlations
`exp4_analysis_b1.json`). The experiment sections render the free folders; the synthesis, the "Norm
budgets" section and a block per budgeted folder cover every budget.

Modules: load (reading folders), format (numbers and tables), blocks (pieces every section uses),
overview (header, synthesis, figures across experiments), suite (experiment sections), budgets
("Norm budgets"), summary_md (summary.md of one result folder).
"""
from __future__ import annotations

from pathlib import Path

from ..experiments.registry import CONDITIONS, EXPERIMENTS
from ..results.folder import atomic_write_text
from .budgets import budgets
from .format import fmt, table
from .load import is_result_folder, load_run, split_budget
from .overview import across, header, synthesis
from .suite import budgeted, exp1, exp1b, exp3, exp4, exp5, others, simple

__all__ = ["fmt", "is_result_folder", "load_run", "split_budget", "table", "write_report"]

_OWN = {"exp1": exp1, "exp1b": exp1b, "exp3": exp3, "exp4": exp4, "exp5": exp5}  # experiment -> its own section
_SECTIONS = {c.name: _OWN[e.name] for e in EXPERIMENTS.values() if e.name in _OWN for c in e.conditions}
"""Condition -> the section that renders a lone result folder of it (others: its block alone)."""


def _experiment_sections(run) -> list[list[str]]:
    """One section per experiment, in the registry's (the log's) order, under the registry's headings."""
    return [_OWN[e.name](run) if e.name in _OWN else simple(run, e.conditions[0].name, e.heading)
            for e in EXPERIMENTS.values()]


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.md and RUN/figures/*.png for a suite or single result folder; return the report's path."""
    run = load_run(run_dir)
    if run.single:  # one result folder: only the section about what it holds
        name = next(iter(run.conditions))
        section = _SECTIONS.get(name)
        if section is not None:
            body = [section(run)]
        elif name in CONDITIONS:
            body = [simple(run, name, CONDITIONS[name].label)]
        elif split_budget(name)[0] in CONDITIONS:
            body = [budgeted(run)]
        else:
            body = [others(run)]
        by_budget = [] if run.conditions[name].free else [budgets(run)]
    else:
        body = _experiment_sections(run) + [budgeted(run), others(run)]
        by_budget = [budgets(run)]
    parts = [header(run), synthesis(run)] + by_budget + [across(run)] + body
    text = "\n".join(line for part in parts for line in part).rstrip() + "\n"
    path = run.root / "report.md"
    atomic_write_text(path, text)
    return path
