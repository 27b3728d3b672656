"""`softreach verify DIR [DIR ...]`: recompute every result folder's numbers from its saved tensors."""
from __future__ import annotations

import argparse
import sys

from .args import refuse_settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("verify", help="recompute every result folder under DIR from its saved tensors (exit 1 on "
                       "any disagreement)", description="Recompute, with a forward of its own (Hugging Face "
                       "output_hidden_states on the full input), the metrics, norm budget, copy baseline, source "
                       "tokens and fixed-text contexts of every result folder under each DIR. Exit 0 when all "
                       "agree, 1 naming the folder, row and field that disagree, 2 for a path with no result folder.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a result folder, or a suite, ladder, steer or sweep folder")
    p.add_argument("--max-problems", type=int, default=None, metavar="N", help="check the first N rows of each folder")
    p.add_argument("--tol", type=float, default=1e-4, help="largest accepted |reported - recomputed| for a cosine "
                   "(MSE-like fields: relative 10 x tol) (default: 1e-4)")
    p.add_argument("--device", default="cpu", help="where to recompute: cpu, cuda or auto (default: cpu)")
    p.add_argument("--continue-steps", type=int, default=0, metavar="N", help="also continue every row from its "
                   "saved input for N steps of projected gradient descent with backtracking (an optimiser of the "
                   "check's own, within the folder's norm budget); a row called converged that gains more than "
                   "0.005 in its loss fails (default: 0, off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    refuse_settings(p, "verify")
    return p


def main(a) -> int:
    from ..verification import verify

    checks = verify(*a.dirs, max_problems=a.max_problems, tol=a.tol, device=a.device,
                    progress=not a.no_progress and sys.stderr.isatty(), continue_steps=a.continue_steps)
    for check in checks:
        for line in check.lines():
            print(line)
    bad = sum(not c.ok for c in checks)
    print(f"softreach verify: {len(checks) - bad} of {len(checks)} result folders agree" + (f"; {bad} do not" if bad else ""))
    return 1 if bad else 0
