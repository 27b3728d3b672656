"""A progress bar over optimisation steps that shows the current median cosine (or another figure)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


class StepBar:
    def __init__(self, total: int, label: str, enabled: bool = True, unit: str = " problem-steps",
                 figure: str = "median cos"):
        self.figure = figure
        self.bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True, disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)

    def update(self, new_problem_steps: int, median_cos: float) -> None:
        self.bar.update(new_problem_steps)
        self.bar.set_postfix_str(f"{self.figure} {median_cos:.4f}", refresh=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.total = self.bar.n  # problems that converge early end the bar before its maximum
        self.bar.refresh()
        self.bar.close()
