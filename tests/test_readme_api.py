"""The README's Python example, on a tiny random model (the names it uses exist and work together)."""
import softreach as sr
from softreach.random_models import random_model


def test_python_api_of_the_readme():
    lm = random_model("llama")
    windows = sr.tokenize_windows(lm, sr.load_corpus_text(), seq_len=8)
    tokens, target, _ = sr.real_targets(lm, windows, layer=2, count=2, seed=0)
    cap = sr.absolute_cap(lm, 1.0)
    assert cap == sr.mean_token_norm(lm)
    res = sr.solve_condition(lm, 2, target, restarts=1, optim=sr.OptimConfig(steps=30), seed=0, cap=cap)
    p = res.problems[0]
    assert {"cos_no_pos0", "copy_cos_no_pos0", "floor_cos_no_pos0", "verdict", "steps_run"} <= set(p)
    free = sr.solve_condition(lm, 2, target, 1, sr.OptimConfig(steps=30), seed=0, warm_start=res.soft_prompt)
    assert free.problems[0]["cos_no_pos0"] >= p["cos_no_pos0"] - 1e-5
    assert (sr.copy_baseline(lm, 2, target).cos > 0.9).all()


def test_every_api_name_resolves_to_its_object_not_a_module():
    import inspect

    for name in sr.__all__:
        assert not inspect.ismodule(getattr(sr, name)), name
