"""`softreach bench`: the engine against the log's method on the same problems and machine.

Measures, in one process: the machine's matmul FLOP/s (float32, bfloat16), the baseline (one
problem at a time through the full model), and the engine (all problems batched, forward stopped
at the layer) in float32 and bfloat16. Reports problem-steps per second, the ratio to the
baseline, achieved FLOP/s against the measured roof, and peak memory.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import time
from dataclasses import replace

import torch

from .baseline import log_method_steps
from .config import STUDY_CONDITION_KEYS, STUDY_RUN_KEYS
from .errors import UserError
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
    if result.get("nanogcg"):
        from .gcg_check import comparison_table

        lines.append(comparison_table(result["nanogcg"]))
    from .solver_study import reference_table, solver_table

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


def _partial_reader(json_out: str | None) -> dict | None:
    """The reference values an interrupted run left beside json_out, to resume from; None when there are none."""
    if not json_out or not os.path.isfile(f"{json_out}.partial"):
        return None
    try:
        return json.loads(open(f"{json_out}.partial", encoding="utf-8").read())["references"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{json_out}.partial is unreadable; remove it to start the reference runs again") from None


def run_bench(workloads: list[str], device: str = "auto", problems: int = 150, steps: int = 10,
              baseline_steps: int = 5, batch_size: int = 64, json_out: str | None = None, log=print,
              convergence_targets: int = 0, convergence_steps: int = 600,
              reference_runs: tuple = tuple(STUDY_RUN_KEYS), study_conditions: tuple = tuple(STUDY_CONDITION_KEYS),
              references: tuple = ()) -> dict:
    from .models import load_model, pick_device
    from .random_models import pythia_160m_shape, random_model
    from .solver_study import read_references

    long_runs = read_references(references)  # read first: a bad file is refused before any work
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
        if name == "nanogcg":
            from .gcg_check import compare_with_nanogcg

            lm = load_model("smollm2-135m", str(dev))
            result["nanogcg"] = compare_with_nanogcg(lm, log=log)
            del lm
            continue
        if name == "references":
            lm = load_model("smollm2-135m", str(dev))
            from .solver_study import reference_values

            result["references"] = reference_values(lm, lm.default_layer(), max(convergence_targets, 1),
                                                    convergence_steps, log=log, partial=_partial_writer(json_out),
                                                    resume=_partial_reader(json_out), runs=reference_runs,
                                                    conditions=study_conditions)
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
            from .solver_study import solver_comparison

            result["solvers"] = solver_comparison(lm, layer, convergence_targets, convergence_steps, log=log,
                                                  conditions=study_conditions,
                                                  references=long_runs)
        del lm
    if json_out:
        from .results.folder import atomic_write_text

        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return result
