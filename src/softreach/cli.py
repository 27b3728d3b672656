"""Command line: `softreach run|suite|report ...`. Errors are one line on stderr with exit code 2."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError

EXPERIMENTS = ("exp1", "exp1b", "exp2a", "exp2b", "exp3", "exp4", "exp5")
NEEDS_EXP1 = ("exp1b", "exp4")

# flag -> (config field, type, help); every default lives in the config dataclasses
RUN_FLAGS = {
    "--model": ("model", str, "hub id, local model folder, .gguf file, or smollm2-135m (default)"),
    "--layer": ("layer", int, "layer L = hidden_states[L] (default: n_layers // 2)"),
    "--targets": ("targets", int, "number of targets"),
    "--restarts": ("restarts", int, "random restarts per target"),
    "--seq-len": ("seq_len", int, "positions T"),
    "--seed": ("seed", int, "seed for windows, initial prompts and random draws"),
    "--device": ("device", str, "auto, cpu or cuda"),
    "--corpus": ("corpus", str, "default (pydoc topics), wikitext2, or a text file"),
    "--ablation": ("ablation", str, "none, no_attn or no_mlp"),
    "--floor-draws": ("floor_draws", int, "random-token draws per target for the floor"),
    "--mean-windows": ("mean_windows", int, "windows averaged for the corpus-mean residual"),
}
OPTIM_FLAGS = {
    "--steps": ("steps", int, "Adam steps"),
    "--lr": ("lr", float, "Adam learning rate"),
    "--init-scale": ("init_scale", float, "standard deviation of the initial soft prompts"),
    "--mse-weight": ("mse_weight", float, "weight of the MSE term in the loss"),
    "--mse-norm": ("mse_norm", str, "none, or target: squared error over the target's mean square per position"),
    "--batch-size": ("batch_size", int, "problems per batched step"),
    "--prune-after": ("prune_after", int, "steps after which only the best restart of each target goes on (0: off)"),
    "--memory-budget-mb": ("memory_budget_mb", float, "memory a batched step may use (MiB); the batch is split to fit"),
    "--schedule": ("schedule", str, "learning-rate schedule: plateau (per problem), constant or cosine"),
    "--start": ("start", str, "copy (restart 0 from the best scaled copy / the smaller budget's solution) or random"),
    "--tol": ("tol", float, "convergence tolerance (1 - cos units): converged once the best loss is below it or the run's "
                        "second half gained less"),
    "--window": ("window", int, "steps between convergence checks (and the plateau schedule's look-back)"),
    "--plateau-decays": ("plateau_decays", int, "learning-rate halvings before a stalled window counts as converged"),
    "--dtype": ("dtype", str, "compute dtype: float32 or bfloat16 (metrics always float32)"),
}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    for flag, (_, typ, text) in {**RUN_FLAGS, **OPTIM_FLAGS}.items():
        p.add_argument(flag, type=typ, default=None, help=text)
    p.add_argument("--skip-pos0", action=argparse.BooleanOptionalAction, default=None,
                   help="leave position 0 out of the loss (default: on; the seed preset: off)")
    p.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=None,
                   help="converged problems leave the batch (default: on; the seed preset: off)")
    p.add_argument("--norm-budget", nargs="+", default=None, metavar="B",
                   help="input-norm budgets in units of the mean token-embedding norm, e.g. 1 inf (inf = free)")
    p.add_argument("--out", required=True, help="folder to create (or resume, for suites)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def overrides(a: argparse.Namespace) -> tuple[dict, dict]:
    """The run and optimiser settings given on the command line (unset flags are absent)."""
    run = {f: getattr(a, f) for f, _, _ in RUN_FLAGS.values() if getattr(a, f) is not None}
    optim = {f: getattr(a, f) for f, _, _ in OPTIM_FLAGS.values() if getattr(a, f) is not None}
    if a.skip_pos0 is not None:
        optim["skip_pos0"] = a.skip_pos0
    if a.early_stop is not None:
        optim["early_stop"] = a.early_stop
    if a.norm_budget is not None:
        from .budget import parse_budgets

        run["norm_budgets"] = parse_budgets(a.norm_budget)
    return run, optim


def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE for suite settings: steps.EXP, restarts.EXP, exp3_pairs, exp5_targets, ..."""
    import json

    out: dict = {}
    seen: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if key in seen and seen[key] != value:
            raise UserError(f"conflicting overrides for {key}: {seen[key]!r} and {value!r}")
        seen[key] = value
        if "." in key:
            group, exp = key.split(".", 1)
            if group not in ("steps", "restarts"):
                raise UserError(f"unknown setting {key!r}: dotted keys are steps.EXP or restarts.EXP")
            out.setdefault(group, {})[exp] = int(value)
        else:
            out[key] = value
    return out


def print_summary(title: str, summary: dict, where: str) -> None:
    from .summary_md import summary_table

    print(f"\n{title}\n")
    print(summary_table(summary))
    print(f"\n{summary['problem_steps_per_second']:.1f} problem-steps/s; results in {where}")


def cmd_run(a: argparse.Namespace) -> int:
    from .config import RunConfig
    from .optimize import OptimConfig

    run, optim = overrides(a)
    if a.experiment == "exp1" and len(run.get("norm_budgets", ())) <= 1 and not _preset_budgets(a.preset, run):
        from .exp1 import run_exp1
        from .presets import preset

        base = preset(a.preset)["run"] if a.preset else {}
        cfg = RunConfig(**{**base, **run, "optim": OptimConfig(**{**base.get("optim", {}), **optim})})
        result, config = run_exp1(cfg, out=a.out, overwrite=a.overwrite, show_progress=not a.no_progress)
        m = config["model"]
        print_summary(f"exp1 on {m['source']}" + (f" ({m['gguf_file']})" if m["gguf_file"] else "")
                      + f", layer {config['layer']}, {cfg.targets} targets x {cfg.restarts} restarts, "
                      f"{cfg.optim.steps} steps", result.summary, a.out)
        return 0
    from .presets import build_suite_config

    sets = parse_sets(a.set)
    sets["experiments"] = ("exp1", a.experiment) if a.experiment in NEEDS_EXP1 else (a.experiment,)
    return _run_suite(build_suite_config(a.preset, run, optim, sets), a)


def _preset_budgets(preset_name: str | None, run: dict) -> bool:
    """Whether a preset (without a --norm-budget override) asks for several budgets."""
    from .presets import preset

    return "norm_budgets" not in run and bool(preset_name) and len(preset(preset_name)["run"].get("norm_budgets", ())) > 1


def cmd_suite(a: argparse.Namespace) -> int:
    from .presets import build_suite_config

    run, optim = overrides(a)
    sets = parse_sets(a.set)
    if a.experiments:
        sets["experiments"] = [e.strip() for e in a.experiments.split(",") if e.strip()]
    cfg = build_suite_config(a.preset, run, optim, sets)
    return _run_suite(cfg, a)


def _run_suite(cfg, a: argparse.Namespace) -> int:
    from .report import write_report
    from .suite import SuiteRunner

    runner = SuiteRunner(cfg, a.out, show_progress=not a.no_progress, overwrite=a.overwrite)
    if runner.resumed:
        print(f"resuming {a.out}: finished experiments are kept, the rest continue from their checkpoints",
              file=sys.stderr)
    runner.run()
    report = write_report(a.out)
    print(f"\nreport: {report}")
    synthesis = report.read_text().split("## Synthesis", 1)
    if len(synthesis) == 2:
        print("## Synthesis" + synthesis[1].split("\n## ", 1)[0])
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from pathlib import Path

    if (Path(a.run_dir) / "frontier.json").is_file():  # a constraint-ladder folder
        from .ladder import write_ladder_report

        print(write_ladder_report(Path(a.run_dir)))
        return 0
    from .report import write_report

    print(write_report(a.run_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softreach", description="Soft prompt reachability of residual-stream targets.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment (exp1 writes a result folder; others a run folder)")
    run.add_argument("experiment", choices=EXPERIMENTS)
    run.add_argument("--preset", default=None, choices=["seed", "quick"],
                     help="start from a preset's settings (seed: the log's protocol); default: the tuned defaults")
    add_config_flags(run)
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="suite setting, e.g. exp3_pairs=4")
    run.set_defaults(func=cmd_run)
    suite = sub.add_parser("suite", help="run every experiment of the log, resumably, and write the report")
    suite.add_argument("--preset", default="quick", help="quick (default, minutes on CPU) or seed (the log's protocol)")
    suite.add_argument("--experiments", default=None, help="comma-separated subset, e.g. exp1,exp1b,exp3")
    suite.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="suite setting: steps.EXP=N, restarts.EXP=N, exp3_pairs, exp5_targets, moment_windows, ...")
    add_config_flags(suite)
    suite.set_defaults(func=cmd_suite)
    from .bench import add_bench_parser
    from .ladder import add_ladder_parser
    from .sweep import add_sweep_parsers

    add_bench_parser(sub)
    add_sweep_parsers(sub)
    add_ladder_parser(sub)
    rep = sub.add_parser("report", help="write report.md and figures for a suite or result folder")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except UserError as e:
        print(f"softreach: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("softreach: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
