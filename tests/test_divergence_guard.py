"""The divergence guard skips non-finite steps, clips, and ends the run after max_bad_steps."""

import math

import torch

from mmplatform.training.divergence import DivergenceGuard


def _layer_with_grad(value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(3, 1)
    for parameter in layer.parameters():
        parameter.grad = torch.full_like(parameter, value)
    return layer


def test_finite_steps_pass_and_are_clipped_to_the_norm():
    guard = DivergenceGuard(max_bad_steps=2, grad_clip_norm=1.0)
    layer = _layer_with_grad(10.0)
    assert guard.check_and_clip(layer.parameters())
    norm = math.sqrt(sum(float((p.grad**2).sum()) for p in layer.parameters()))
    assert abs(norm - 1.0) < 1e-5
    assert guard.bad_steps == 0 and not guard.diverged


def test_without_clipping_gradients_are_left_alone():
    guard = DivergenceGuard(max_bad_steps=2)
    layer = _layer_with_grad(10.0)
    assert guard.check_and_clip(layer.parameters())
    assert all(torch.all(p.grad == 10.0) for p in layer.parameters())


def test_non_finite_gradients_count_until_diverged():
    guard = DivergenceGuard(max_bad_steps=2, grad_clip_norm=1.0)
    assert not guard.check_and_clip(_layer_with_grad(float("nan")).parameters())
    assert not guard.diverged
    assert not guard.check_and_clip(_layer_with_grad(float("inf")).parameters())
    assert guard.diverged
    restored = DivergenceGuard(max_bad_steps=2)
    restored.load_state_dict(guard.state_dict())
    assert restored.diverged
