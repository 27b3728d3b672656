"""`softreach bench`: the engine against the log's method on the same problems and machine.

Measures, in one process: the machine's matmul FLOP/s (float32, bfloat16), the baseline (one
problem at a time through the full model), and the engine (all problems batched, forward stopped
at the layer) in float32 and bfloat16. Reports problem-steps per second, the ratio to the
baseline, achieved FLOP/s against the measured roof, and peak memory.
"""
from __future__ import annotations

import json
import platform
import resource
import time
from dataclasses import replace

import torch

from .baseline import log_method_steps
from .models import LoadedModel
from .optimize import OptimConfig, initial_prompts, optimise
from .residual import residual_at


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_roof(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of an n x n matmul in `dtype` on `device`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def flops_per_problem_step(lm: LoadedModel, layer: int, seq_len: int, dtype: str = "float32") -> float:
    """FLOPs of one engine step for one problem (forward to the layer, input-gradient backward), counted."""
    from torch.utils.flop_counter import FlopCounterMode

    model = lm.compute_model(dtype)
    x = torch.randn(1, seq_len, lm.d_model, device=lm.device, dtype=getattr(torch, dtype), requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        residual_at(model, layer, inputs_embeds=x).float().pow(2).sum().backward()
    return float(counter.get_total_flops())


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process peak RSS (Linux: KiB)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def time_baseline(lm: LoadedModel, layer: int, targets: torch.Tensor, init: torch.Tensor, steps: int) -> float:
    """Problem-steps per second of the log's method over the first few problems."""
    log_method_steps(lm, layer, targets[:1], init[:1], 2)  # warm-up
    _sync(lm.device)
    start = time.perf_counter()
    k = min(2, targets.shape[0])
    for i in range(k):
        log_method_steps(lm, layer, targets[i : i + 1], init[i : i + 1], steps)
    _sync(lm.device)
    return k * steps / (time.perf_counter() - start)


def time_engine(lm: LoadedModel, layer: int, targets: torch.Tensor, init: torch.Tensor, cfg: OptimConfig) -> float:
    """Problem-steps per second of the batched engine on all problems."""
    optimise(lm, layer, targets[: cfg.batch_size], init[: cfg.batch_size], replace(cfg, steps=2))  # warm-up
    _sync(lm.device)
    start = time.perf_counter()
    optimise(lm, layer, targets, init, cfg)
    _sync(lm.device)
    return targets.shape[0] * cfg.steps / (time.perf_counter() - start)


def bench_workload(name: str, lm: LoadedModel, layer: int, problems: int, seq_len: int, steps: int,
                   baseline_steps: int, batch_size: int, roofs: dict, log=print) -> dict:
    """Baseline, engine float32 and engine bfloat16 on the same random targets."""
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(problems, seq_len, lm.d_model, generator=g)  # [P, T, d]; speed does not depend on them
    init = initial_prompts([(i, 0) for i in range(problems)], seq_len, lm.d_model, 1.0, seed=0)
    rows = {}
    _reset_peak(lm.device)
    log(f"[{name}] baseline: the log's method, {baseline_steps} steps per problem ...")
    rows["baseline (log's method)"] = {"problem_steps_per_s": time_baseline(lm, layer, targets, init, baseline_steps),
                                       "dtype": "float32", "peak_memory_bytes": peak_memory_bytes(lm.device)}
    for dtype in ("float32", "bfloat16"):
        if dtype == "bfloat16" and roofs["bfloat16"] < roofs["float32"] / 2:
            log(f"[{name}] engine bfloat16 skipped: bf16 matmul here runs at {roofs['bfloat16'] / 1e9:.1f} GFLOP/s, "
                f"below float32 (no native bf16 on this processor)")
            rows["engine bfloat16"] = {"skipped": "no fast bf16 matmul on this device", "dtype": dtype}
            continue
        _reset_peak(lm.device)
        log(f"[{name}] engine {dtype}: {problems} problems x {steps} steps, batch {batch_size} ...")
        cfg = OptimConfig(steps=steps, batch_size=batch_size, dtype=dtype)
        rate = time_engine(lm, layer, targets, init, cfg)
        flops = flops_per_problem_step(lm, layer, seq_len, dtype)
        rows[f"engine {dtype}"] = {"problem_steps_per_s": rate, "dtype": dtype,
                                   "flops_per_problem_step": flops, "achieved_flops": rate * flops,
                                   "roof_fraction": rate * flops / roofs[dtype],
                                   "peak_memory_bytes": peak_memory_bytes(lm.device)}
    base = rows["baseline (log's method)"]["problem_steps_per_s"]
    for row in rows.values():
        if "problem_steps_per_s" in row:
            row["ratio_to_baseline"] = row["problem_steps_per_s"] / base
    return {"workload": name, "layer": layer, "problems": problems, "seq_len": seq_len, "rows": rows}


def convergence_check(lm: LoadedModel, layer: int, targets: int, seed: int = 0, log=print,
                      restarts: int = 1) -> dict:
    """The log's settings for 1000 steps against the tuned defaults for 200, on the same real targets.

    `restarts` per target for both (the best one counts, as in the log's protocol of 3); final metrics
    recomputed in float32 after the last step.
    """
    from .condition import solve_condition
    from .corpus import load_corpus_text
    from .exp1 import real_targets
    from .optimize import LOG_OPTIM
    from .targets import tokenize_windows

    windows = tokenize_windows(lm, load_corpus_text(), 20)
    _, target, _ = real_targets(lm, windows, layer, targets, seed)
    out = {"targets": targets, "layer": layer, "restarts": restarts}
    for name, cfg in (("log settings, 1000 steps", OptimConfig(**LOG_OPTIM)), ("tuned defaults, 200 steps", OptimConfig())):
        log(f"convergence: {name} on {targets} real targets x {restarts} restarts ...")
        res = solve_condition(lm, layer, target, restarts, cfg, seed, floor_draws=0)
        out[name] = {"steps": cfg.steps, "median_cos": res.summary["cos"]["median"],
                     "median_cos_no_pos0": res.summary["cos_no_pos0"]["median"],
                     "median_mse_no_pos0": res.summary["mse_no_pos0"]["median"], "seconds": res.seconds}
    return out


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def format_table(result: dict) -> str:
    lines = [f"machine: {result['machine']}",
             f"matmul roof: float32 {result['roofs']['float32'] / 1e9:.3g} GFLOP/s, "
             f"bfloat16 {result['roofs']['bfloat16'] / 1e9:.3g} GFLOP/s", ""]
    for w in result["workloads"]:
        lines += [f"{w['workload']} (layer {w['layer']}, {w['problems']} problems, T={w['seq_len']})",
                  "| method | problem-steps/s | x baseline | GFLOP/s | of roof | peak memory |",
                  "|---|---|---|---|---|---|"]
        for name, r in w["rows"].items():
            if "skipped" in r:
                lines.append(f"| {name} | skipped: {r['skipped']} | | | | |")
                continue
            gf = f"{r['achieved_flops'] / 1e9:.0f}" if "achieved_flops" in r else "-"
            roof = f"{100 * r['roof_fraction']:.0f}%" if "roof_fraction" in r else "-"
            lines.append(f"| {name} | {r['problem_steps_per_s']:.1f} | {r['ratio_to_baseline']:.1f}x | {gf} | {roof} | "
                         f"{r['peak_memory_bytes'] / 2**20:.0f} MiB |")
        lines.append("")
    conv = result.get("convergence")
    if conv:
        restarts = conv.get("restarts", 1)
        lines += [f"convergence on SmolLM2 layer {conv['layer']}, {conv['targets']} real targets, "
                  f"best of {restarts} restart{'s' if restarts > 1 else ''}:",
                  "| settings | steps | median cos | median cos w/o pos 0 | median MSE w/o pos 0 | seconds |",
                  "|---|---|---|---|---|---|"]
        for name, r in conv.items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {r['steps']} | {r['median_cos']:.4f} | {r['median_cos_no_pos0']:.4f} | "
                             f"{r['median_mse_no_pos0']:.3g} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def run_bench(workloads: list[str], device: str = "auto", problems: int = 150, steps: int = 10,
              baseline_steps: int = 5, batch_size: int = 64, json_out: str | None = None, log=print,
              convergence_targets: int = 0, convergence_restarts: int = 1) -> dict:
    from .models import load_model, pick_device
    from .random_models import pythia_160m_shape, random_model

    dev = pick_device(device)
    log("measuring the matmul roof ...")
    roofs = {"float32": matmul_roof(torch.float32, dev), "bfloat16": matmul_roof(torch.bfloat16, dev)}
    result = {"machine": machine_description(dev), "device": str(dev), "roofs": roofs, "workloads": [],
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in workloads:
        if name == "pythia":
            lm = random_model("gpt_neox", device=str(dev), **pythia_160m_shape())
            layer, label = 6, "Pythia-160M shape (random weights)"
        else:
            lm = load_model("smollm2-135m", str(dev))
            layer, label = lm.default_layer(), "SmolLM2-135M (embedded)"
        result["workloads"].append(bench_workload(label, lm, layer, problems, 20, steps, baseline_steps, batch_size,
                                                  roofs, log))
        if name == "smollm2" and convergence_targets:
            result["convergence"] = convergence_check(lm, layer, convergence_targets, log=log,
                                                      restarts=convergence_restarts)
        del lm
    if json_out:
        from .store import atomic_write_text

        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return result


def cmd_bench(a) -> int:
    """CLI entry: `softreach bench`."""
    import sys

    from .errors import UserError

    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in ("pythia", "smollm2"):
            raise UserError(f"unknown workload {w!r}: choose from pythia, smollm2")
    if a.convergence_targets < 0 or a.convergence_restarts < 1:
        raise UserError("--convergence-targets must be >= 0 and --convergence-restarts >= 1")
    result = run_bench(workloads, a.device, a.problems, a.steps, a.baseline_steps, a.batch_size, a.json,
                       log=lambda m: print(m, file=sys.stderr, flush=True), convergence_targets=a.convergence_targets,
                       convergence_restarts=a.convergence_restarts)
    print(format_table(result))
    if a.json:
        print(f"written {a.json}")
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure the engine against the log's method on this machine")
    p.add_argument("--workloads", default="pythia,smollm2", help="comma-separated: pythia (Pythia-160M shape, "
                   "random weights, L=6), smollm2 (embedded model, middle layer)")
    p.add_argument("--problems", type=int, default=150, help="problems per workload (default %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="engine steps timed (default %(default)s)")
    p.add_argument("--baseline-steps", type=int, default=5, help="baseline steps timed per problem (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="engine batch (default %(default)s)")
    p.add_argument("--convergence-targets", type=int, default=0,
                   help="also run the log's settings (1000 steps) and the tuned defaults (200) on this many real "
                        "SmolLM2 targets and compare their median cosine (0: skip; slow)")
    p.add_argument("--convergence-restarts", type=int, default=1,
                   help="restarts per target in that comparison, best one counted (the log used 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    p.set_defaults(func=cmd_bench)
