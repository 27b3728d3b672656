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
from .residual import decoder_blocks, residual_at


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_roof(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 2.0,
                shapes: list[tuple[int, int, int]] | None = None) -> float:
    """Best sustained FLOP/s over several GEMM shapes (m, k, n) in `dtype` on `device`: square ones and,
    where given, the engine's own (one shape alone underestimates the peak the engine can reach)."""
    shapes = [(n, n, n), (2 * n, 2 * n, 2 * n)] + list(shapes or [])
    return max(_gemm_rate(shape, dtype, device, seconds / len(shapes)) for shape in shapes)


def _gemm_rate(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    m, k, n = shape
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b  # warm-up
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        a @ b
        count += 1
        _sync(device)
    return 2 * m * k * n * count / (time.perf_counter() - start)


def engine_gemm_shapes(lm: LoadedModel, batch: int, seq_len: int) -> list[tuple[int, int, int]]:
    """The MLP GEMMs of one batched engine step: [B*T, d] x [d, d_mlp] and back."""
    d = lm.d_model
    d_mlp = getattr(lm.model.config, "intermediate_size", None) or 4 * d
    return [(batch * seq_len, d, d_mlp), (batch * seq_len, d_mlp, d)]


def flops_per_problem_step(lm: LoadedModel, layer: int, seq_len: int, dtype: str = "float32") -> float:
    """FLOPs of one engine step for one problem (forward to the layer, input-gradient backward), counted."""
    from torch.utils.flop_counter import FlopCounterMode

    model = lm.compute_model(dtype)
    x = torch.randn(1, seq_len, lm.d_model, device=lm.device, dtype=getattr(torch, dtype), requires_grad=True)
    try:
        with FlopCounterMode(display=False) as counter:
            residual_at(model, layer, inputs_embeds=x).float().pow(2).sum().backward()
        return float(counter.get_total_flops())
    except AssertionError:  # some torch builds cannot count grouped-query attention on CUDA
        blocks = decoder_blocks(model)[:layer]
        weights = sum(p.numel() for b in blocks for p in b.parameters() if p.dim() == 2)
        return 2.0 * 2 * weights * seq_len  # forward + input-gradient backward, matmuls only


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


def bench_steer(lm: LoadedModel, layer: int, problems: int, steps: int, batch_size: int, log=print,
                n_before: int = 100, soft: int = 20, n_after: int = 4) -> dict:
    """Soft slots after fixed text (the suffix layout): one problem at a time on the full input, all problems
    batched on the full input, and batched with the text before the slots cached (the engine's way)."""
    from .frame import TextFrame

    g = torch.Generator().manual_seed(0)
    ids = lm.ordinary_token_ids()
    before = ids[torch.randint(0, ids.numel(), (problems, n_before), generator=g)]
    after = ids[torch.randint(0, ids.numel(), (problems, n_after), generator=g)]
    positions = torch.arange(n_before + soft, n_before + soft + n_after)
    targets = torch.randn(problems, n_after, lm.d_model, generator=g)  # [N, P, d]
    init = initial_prompts([(i, 0) for i in range(problems)], soft, lm.d_model, 1.0, seed=0)
    cfg = OptimConfig(steps=steps, batch_size=batch_size, early_stop=False, start="random", skip_pos0=False)
    rows = {}
    for name, cached, one_at_a_time in (("one problem at a time, full input", False, True),
                                        ("batched, full input", False, False),
                                        ("batched, text before the slots cached (engine)", True, False)):
        frame = TextFrame(before, after, soft, positions, cached=cached)
        k = min(2, problems) if one_at_a_time else problems
        run_cfg = replace(cfg, batch_size=1) if one_at_a_time else cfg
        log(f"[steer] {name}: {k} problems x {steps} steps ...")
        optimise(lm, layer, targets[:1], init[:1], replace(run_cfg, steps=2), frame=frame.select(slice(0, 1)))  # warm-up
        _reset_peak(lm.device)
        _sync(lm.device)
        start = time.perf_counter()
        optimise(lm, layer, targets[:k], init[:k], run_cfg, frame=frame.select(slice(0, k)))
        _sync(lm.device)
        rows[name] = {"problem_steps_per_s": k * steps / (time.perf_counter() - start), "dtype": "float32",
                      "peak_memory_bytes": peak_memory_bytes(lm.device)}
    base = rows["one problem at a time, full input"]["problem_steps_per_s"]
    for row in rows.values():
        row["ratio_to_baseline"] = row["problem_steps_per_s"] / base
    return {"workload": f"steer: {n_before} fixed tokens, {soft} soft slots, {n_after} steered tokens after them",
            "layer": layer, "problems": problems, "seq_len": n_before + soft + n_after, "rows": rows}


SOLVERS = {
    # the defaults before norm budgets and verdicts: N(0,1) start, cosine schedule from lr 0.1, fixed steps
    "random start, cosine lr 0.1 (before budgets)": dict(start="random", schedule="cosine", lr=0.1, early_stop=False,
                                                        prune_after=0, step_rule="projected"),
    "projected Adam, plateau lr 0.2, 6 decays (before issue 17)": dict(step_rule="projected", plateau_decays=6),
    "tangent Adam, plateau lr 0.2, 12 decays (default)": dict(),
}


def solver_conditions(lm: LoadedModel, layer: int, targets: int, seed: int = 0) -> dict:
    """The budget-1 conditions the solvers are compared on: name -> (targets [N, T, d], ablation)."""
    from .synthetic_targets import (corrupt_raw_dimensions, distribution_matched_targets, fit_position_gaussian,
                                    raw_random_targets, typical_norms)
    from .targets import corpus_targets, residuals_of_tokens, sample_windows

    windows, _, real, idx = corpus_targets(lm, "default", 20, layer, targets, seed)
    ref = residuals_of_tokens(lm, windows.tokens[sample_windows(windows, min(1000, windows.count - targets), seed + 11,
                                                                  exclude=idx)], layer)  # [M, T, d]
    mean, chol = fit_position_gaussian(ref)
    return {"Exp 1 real": (real, "none"),
            "Exp 2a distribution-matched": (distribution_matched_targets(mean, chol, targets, seed + 21), "none"),
            "Exp 2b raw random": (raw_random_targets(typical_norms(ref), targets, lm.d_model, seed + 23), "none"),
            "Exp 4 no MLP": (real, "no_mlp"),
            "Exp 5A raw corruption 0.5": (corrupt_raw_dimensions(real, 0.5, ref.std(0), seed + 51), "none")}


def solver_comparison(lm: LoadedModel, layer: int, targets: int, steps: int, seed: int = 0, log=print) -> dict:
    """Every solver of SOLVERS from the same starts on the same targets of five conditions at budget 1.

    Per problem the reference is, until long reference runs exist, the best fidelity (cos w/o position 0) any
    solver reached; a solver's evaluations to it are the forward+backward passes until its best-so-far fidelity
    is within 0.005 of it (the issue's bar), and its verdicts say whether it converged.
    """
    from .budget import absolute_cap
    from .condition import solve_condition

    rows = []
    for cond, (target, ablation) in solver_conditions(lm, layer, targets, seed).items():
        runs = {}
        for name, kw in SOLVERS.items():
            log(f"solvers: {cond}, budget 1, {name} ...")
            cfg = OptimConfig(steps=steps, skip_pos0=True, **kw)
            res = solve_condition(lm, layer, target, 1, cfg, seed, ablation=ablation, floor_draws=0,
                                  cap=absolute_cap(lm, 1.0))
            runs[name] = (res, torch.cummax(torch.nan_to_num(res.cos_curve[:, 0], nan=-2.0), 1).values)  # [N, S]
        reference = torch.stack([torch.tensor([p["cos_no_pos0"] for p in r.problems])
                                 for r, _ in runs.values()]).max(0).values  # [N]
        for name, (res, best_so_far) in runs.items():
            reached = best_so_far >= (reference - 5e-3).unsqueeze(1)  # [N, S]
            first = torch.where(reached.any(1), reached.float().argmax(1) + 1, torch.full((targets,), -1))
            rows.append({"condition": cond, "budget": "1", "solver": name, "reference": float(reference.quantile(0.5)),
                         "median_cos_no_pos0": res.summary["cos_no_pos0"]["median"],
                         "copy_cos_no_pos0": res.summary["copy_cos_no_pos0"]["median"],
                         "steps_to_reference": [int(x) for x in first],
                         "steps_run": [int(p["steps_run"]) for p in res.problems],
                         "share_converged": res.summary.get("share_converged", 0.0),
                         "seconds": res.seconds})
    return {"layer": layer, "targets": targets, "max_steps": steps, "rows": rows}


REFERENCE_RUNS = {
    # two long runs per problem: the default from the copy start, and the old default from a random start with a
    # cosine schedule over the whole run (at 600 evaluations it was the best on Exp 2b and 5A)
    "tangent Adam, copy start, plateau lr 0.2": dict(),
    "Adam, random start, cosine lr 0.1": dict(start="random", schedule="cosine", lr=0.1, early_stop=False,
                                              prune_after=0),
}


def reference_values(lm: LoadedModel, layer: int, targets: int, steps: int, seed: int = 0, log=print,
                     partial=None) -> dict:
    """Reference fidelities at budget 1: per condition of solver_conditions and per target, the best cos without
    position 0 that REFERENCE_RUNS reach in up to `steps` evaluations each (the default stops when converged).

    The number each solver is measured against, as far as anyone here has pushed it; `converged` says whether
    the run that reached it passed the convergence test (else the reference is itself a lower bound).
    `partial(result so far)` is called after each condition (long runs lose nothing when stopped).
    """
    from .budget import absolute_cap
    from .condition import solve_condition

    rows = []
    conditions = solver_conditions(lm, layer, targets, seed)
    for cond in sorted(conditions, key=lambda c: c == "Exp 1 real"):  # the hard ones first; Exp 1 converges anyway
        target, ablation = conditions[cond]
        runs = {}
        for name, kw in REFERENCE_RUNS.items():
            log(f"references: {cond}, budget 1, {name}, up to {steps} evaluations ...")
            cfg = OptimConfig(steps=steps, skip_pos0=True, **kw)
            runs[name] = solve_condition(lm, layer, target, 1, cfg, seed, ablation=ablation, floor_draws=0,
                                         cap=absolute_cap(lm, 1.0))
        for i in range(target.shape[0]):
            name, res = max(runs.items(), key=lambda kv: kv[1].problems[i]["cos_no_pos0"])
            p = res.problems[i]
            rows.append({"condition": cond, "target": i, "reference": p["cos_no_pos0"], "run": name,
                         "verdict": p["verdict"], "steps_run": int(p["steps_run"]),
                         "copy_cos_no_pos0": p["copy_cos_no_pos0"],
                         "by_run": {n: r.problems[i]["cos_no_pos0"] for n, r in runs.items()},
                         "seconds": sum(r.seconds for r in runs.values()) / target.shape[0]})
        log(f"references: {cond}: " + ", ".join(f"{r['reference']:.4f} ({r['verdict']})" for r in rows
                                                 if r["condition"] == cond))
        if partial:
            partial({"layer": layer, "targets": targets, "max_steps": steps, "rows": rows})
    return {"layer": layer, "targets": targets, "max_steps": steps, "rows": rows}


def reference_table(refs: dict) -> str:
    """The reference values as markdown: one line per condition (median and range over its targets)."""
    import numpy as np

    lines = [f"reference values on SmolLM2 layer {refs['layer']} at budget 1 (cos without position 0), "
             f"{refs['targets']} targets per condition, the best of two runs of up to {refs['max_steps']} "
             "evaluations each (" + "; ".join(REFERENCE_RUNS) + "):",
             "| condition | median reference | min | max | copy baseline | converged | best run (count) |",
             "|---|---|---|---|---|---|---|"]
    for cond in dict.fromkeys(r["condition"] for r in refs["rows"]):
        rows = [r for r in refs["rows"] if r["condition"] == cond]
        ref = np.array([r["reference"] for r in rows])
        best = {n: sum(r["run"] == n for r in rows) for n in REFERENCE_RUNS}
        lines.append(f"| {cond} | {np.median(ref):.4f} | {ref.min():.4f} | {ref.max():.4f} | "
                     f"{np.median([r['copy_cos_no_pos0'] for r in rows]):.4f} | "
                     f"{sum(r['verdict'] == 'converged' for r in rows)}/{len(rows)} | "
                     + ", ".join(f"{n.split(',')[1].strip()} ({c})" for n, c in best.items() if c) + " |")
    return "\n".join(lines) + "\n"


def solver_table(comp: dict) -> str:
    """The solver comparison as markdown: evaluations to within 0.005 of the best fidelity found."""
    import numpy as np

    lines = [f"solvers on SmolLM2 layer {comp['layer']} at budget 1, {comp['targets']} targets per condition, the same "
             f"starts, at most {comp['max_steps']} forward+backward evaluations per problem (to reach: median over "
             "targets of the evaluations until within 0.005 of the best fidelity any solver found; 'not reached' "
             "counts as never):",
             "| condition | solver | best found | final cos w/o pos 0 | copy baseline | evaluations to reach | "
             "reached | evaluations run | converged | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in comp["rows"]:
        steps = np.array(r["steps_to_reference"], dtype=float)
        reached = steps > 0
        med = np.median(np.where(reached, steps, np.inf))
        med_text = f"{med:.0f}" if np.isfinite(med) else f"> {comp['max_steps']}"
        lines.append(f"| {r['condition']} | {r['solver']} | {r['reference']:.4f} | "
                     f"{r['median_cos_no_pos0']:.4f} | {r['copy_cos_no_pos0']:.4f} | {med_text} | "
                     f"{int(reached.sum())}/{len(steps)} | {np.median(r['steps_run']):.0f} | "
                     f"{100 * r['share_converged']:.0f}% | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


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
    if result.get("references"):
        lines.append(reference_table(result["references"]))
    if result.get("solvers"):
        lines.append(solver_table(result["solvers"]))
    return "\n".join(lines)


def _partial_writer(json_out: str | None):
    """Writes the reference values so far beside the final JSON (json_out + '.partial'), or nothing."""
    if not json_out:
        return None
    from .results.folder import atomic_write_text

    return lambda refs: atomic_write_text(f"{json_out}.partial", json.dumps({"references": refs}, indent=2) + "\n")


def run_bench(workloads: list[str], device: str = "auto", problems: int = 150, steps: int = 10,
              baseline_steps: int = 5, batch_size: int = 64, json_out: str | None = None, log=print,
              convergence_targets: int = 0, convergence_steps: int = 600) -> dict:
    from .models import load_model, pick_device
    from .random_models import pythia_160m_shape, random_model

    dev = pick_device(device)
    log("measuring the matmul roof ...")
    from .random_models import random_model as _tiny

    shapes = engine_gemm_shapes(_tiny("llama", d_model=576, n_layers=1, d_mlp=1536), batch_size, 20) + \
        engine_gemm_shapes(_tiny("gpt_neox", d_model=768, n_layers=1, d_mlp=3072), batch_size, 20)
    roofs = {"float32": matmul_roof(torch.float32, dev, shapes=shapes),
             "bfloat16": matmul_roof(torch.bfloat16, dev, shapes=shapes)}
    result = {"machine": machine_description(dev), "device": str(dev), "roofs": roofs, "workloads": [],
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in workloads:
        if name == "references":
            lm = load_model("smollm2-135m", str(dev))
            result["references"] = reference_values(lm, lm.default_layer(), max(convergence_targets, 1),
                                                    convergence_steps, log=log, partial=_partial_writer(json_out))
            del lm
            continue
        if name == "steer":
            lm = load_model("smollm2-135m", str(dev))
            result["workloads"].append(bench_steer(lm, lm.default_layer(), problems, steps, batch_size, log))
            del lm
            continue
        if name == "pythia":
            lm = random_model("gpt_neox", device=str(dev), **pythia_160m_shape())
            layer, label = 6, "Pythia-160M shape (random weights)"
        else:
            lm = load_model("smollm2-135m", str(dev))
            layer, label = lm.default_layer(), "SmolLM2-135M (embedded)"
        result["workloads"].append(bench_workload(label, lm, layer, problems, 20, steps, baseline_steps, batch_size,
                                                  roofs, log))
        if name == "smollm2" and convergence_targets:
            result["solvers"] = solver_comparison(lm, layer, convergence_targets, convergence_steps, log=log)
        del lm
    if json_out:
        from .results.folder import atomic_write_text

        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return result
