"""`softreach run EXP`: one experiment (plus those it reads); Exp 1 at one budget writes one result folder.
`softreach run steer` (cli/steer.py) steers fixed text from soft slots around it."""
from __future__ import annotations

import argparse

from ..config import SuiteConfig
from ..experiments.registry import ORDER, with_needs
from ..presets import PRESETS, preset
from . import steer
from .args import SUITE_ALIASES, add_config_flags, add_output_options, add_settings_options, settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run one experiment (exp1 at one budget writes a result folder; others a "
                       "suite folder; steer: soft slots around fixed text)")
    experiments = p.add_subparsers(dest="experiment", required=True, metavar="{" + ",".join(ORDER + ("steer",)) + "}",
                                   parser_class=type(p))
    for name in ORDER:
        e = experiments.add_parser(name, help=f"experiment {name} of the log")
        e.add_argument("--preset", default=None, metavar="{" + ",".join(PRESETS) + "}",
                       help="start from a preset's settings (seed: the log's protocol); default: the tuned defaults")
        add_config_flags(e, SuiteConfig, skip=("experiments",))
        add_settings_options(e)
        add_output_options(e, "result folder (a suite folder for several budgets or experiments)")
        e.set_defaults(func=main)
    steer.add_parser(experiments).set_defaults(func=steer.main)
    return p


def main(a) -> int:
    cfg = settings(a, SuiteConfig, preset(a.preset), SUITE_ALIASES, fixed={"experiments": with_needs([a.experiment])})
    if cfg.experiments == ("exp1",) and len(cfg.run.norm_budgets) == 1:
        from ..experiments.suite import SuiteRunner
        from ..report.summary_md import summary_table

        runner = SuiteRunner(cfg, a.out, show_progress=not a.no_progress, overwrite=a.overwrite, single=True)
        runner.run()
        result, config = next(iter(runner.results.values()))
        m = config["model"]
        print(f"\nexp1 on {m['source']}" + (f" ({m['gguf_file']})" if m["gguf_file"] else "")
              + f", layer {config['layer']}, {cfg.run.targets} targets x {cfg.run.restarts} restarts, "
              f"{cfg.run.optim.steps} steps\n")
        print(summary_table(result.summary))
        print(f"\n{result.summary['problem_steps_per_second']:.1f} problem-steps/s; results in {a.out}")
        return 0
    from ..experiments.suite import run_and_report

    return run_and_report(cfg, a.out, a.overwrite, not a.no_progress)
