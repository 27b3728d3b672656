import torch

from softreach.metrics import problem_metrics, reachability_loss


def test_identical_states_are_perfect():
    t = torch.randn(3, 5, 8)
    m = problem_metrics(t.clone(), t, corpus_mean=torch.randn(5, 8))
    assert torch.allclose(m["cos"], torch.ones(3))
    assert torch.allclose(m["mse"], torch.zeros(3))
    assert torch.allclose(m["fvu"], torch.zeros(3))
    assert torch.allclose(m["centred_cos"], torch.ones(3), atol=1e-6)


def test_metrics_by_hand():
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [1, 2, 2]
    achieved = torch.tensor([[[0.0, 1.0], [0.0, 4.0]]])
    m = problem_metrics(achieved, target)
    assert torch.isclose(m["cos"], torch.tensor([0.5]))  # cos 0 at position 0, 1 at position 1
    assert torch.isclose(m["mse"], torch.tensor([(1 + 1 + 0 + 4) / 4]))
    assert torch.isclose(m["cos_no_pos0"], torch.tensor([1.0]))
    assert torch.isclose(m["mse_no_pos0"], torch.tensor([2.0]))


def test_loss_follows_the_log_and_its_options():
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    achieved = torch.tensor([[[0.0, 1.0], [0.0, 4.0]]])
    loss, cos = reachability_loss(achieved, target, mse_weight=0.01)
    assert torch.isclose(loss, torch.tensor([0.5 + 0.01 * 1.5]))
    assert torch.isclose(cos, torch.tensor([0.5]))
    loss, _ = reachability_loss(achieved, target, mse_weight=0.01, skip_pos0=True)
    assert torch.isclose(loss, torch.tensor([0.0 + 0.01 * 2.0]))
    # normalised MSE: position 0 error 1 / target mean square 0.5; position 1: 2 / 2
    loss, _ = reachability_loss(achieved, target, mse_weight=1.0, mse_norm="target")
    assert torch.isclose(loss, torch.tensor([0.5 + (2.0 + 1.0) / 2]))
