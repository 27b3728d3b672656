"""Command line: `softreach run exp1 ...`. Errors are one line on stderr with exit code 2."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError

EXPERIMENTS = ("exp1",)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every experiment (names follow the config fields)."""
    from .config import RunConfig
    from .optimize import OptimConfig

    d, o = RunConfig(), OptimConfig()
    p.add_argument("--model", default=d.model, help="hub id, local model folder, .gguf file, or smollm2-135m (default)")
    p.add_argument("--layer", type=int, default=None, help="layer L = hidden_states[L] (default: n_layers // 2)")
    p.add_argument("--targets", type=int, default=d.targets, help="number of targets (default %(default)s)")
    p.add_argument("--restarts", type=int, default=d.restarts, help="random restarts per target (default %(default)s)")
    p.add_argument("--steps", type=int, default=o.steps, help="Adam steps (default %(default)s)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="positions T (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (default %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")
    p.add_argument("--corpus", default=d.corpus, help="default (pydoc topics), wikitext2, or a text file")
    p.add_argument("--ablation", default=d.ablation, choices=["none", "no_attn", "no_mlp"])
    p.add_argument("--lr", type=float, default=o.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--init-scale", type=float, default=o.init_scale, help="init std (default %(default)s)")
    p.add_argument("--mse-weight", type=float, default=o.mse_weight, help="MSE weight in the loss (default %(default)s)")
    p.add_argument("--mse-norm", default=o.mse_norm, choices=["none", "target"],
                   help="divide each position's squared error by the target's mean square (target)")
    p.add_argument("--skip-pos0", action="store_true", help="leave position 0 out of the loss")
    p.add_argument("--batch-size", type=int, default=o.batch_size, help="problems per batched step (default %(default)s)")
    p.add_argument("--floor-draws", type=int, default=d.floor_draws, help="random-token draws per target for the floor")
    p.add_argument("--out", required=True, help="result folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def config_from_args(a: argparse.Namespace):
    from .config import RunConfig
    from .optimize import OptimConfig

    optim = OptimConfig(steps=a.steps, lr=a.lr, init_scale=a.init_scale, mse_weight=a.mse_weight,
                        skip_pos0=a.skip_pos0, mse_norm=a.mse_norm, batch_size=a.batch_size)
    return RunConfig(model=a.model, layer=a.layer, targets=a.targets, restarts=a.restarts, seq_len=a.seq_len,
                     seed=a.seed, device=a.device, corpus=a.corpus, ablation=a.ablation,
                     floor_draws=a.floor_draws, optim=optim)


def cmd_run(a: argparse.Namespace) -> int:
    from .exp1 import run_exp1
    from .summary_md import summary_table

    cfg = config_from_args(a)
    result, config = run_exp1(cfg, out=a.out, overwrite=a.overwrite, show_progress=not a.no_progress)
    print(f"\n{a.experiment} on {config['model']['source']}"
          + (f" ({config['model']['gguf_file']})" if config["model"]["gguf_file"] else "")
          + f", layer {config['layer']}, {cfg.targets} targets x {cfg.restarts} restarts, {cfg.optim.steps} steps\n")
    print(summary_table(result.summary))
    print(f"\n{result.summary['problem_steps_per_second']:.1f} problem-steps/s; results in {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softreach", description="Soft prompt reachability of residual-stream targets.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment and write a result folder")
    run.add_argument("experiment", choices=EXPERIMENTS)
    add_run_flags(run)
    run.set_defaults(func=cmd_run)
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
        print("softreach: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
