"""The flow back ends against independent computations: inversion, autograd Jacobians, clamping."""

from __future__ import annotations

import pytest
import torch

from models.flows import FLOW_BACKENDS, Flow, IdentityFlow, build_flow

DIM = 5
# Every transform kind, each through the same suite.
BACKENDS = ["freia_allinone", "freia_glow", "nflows_coupling", "nflows_maf"]


def make_flow(backend: str, dim: int = DIM, num_flows: int = 3, clamp: float = 2.0) -> Flow:
    torch.manual_seed(0)
    flow = build_flow(backend, dim, num_flows=num_flows, coupling_layers=2, coupling_width=16, clamp=clamp)
    # Library inits make some blocks nearly linear; perturb the trainable parameters so the
    # map is clearly non-linear. Frozen ones (AllInOneBlock's rotation, permutations) are
    # left alone: changing them breaks invertibility (stack-probe 2a).
    with torch.no_grad():
        for parameter in flow.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    return flow.double()


@pytest.mark.parametrize("backend", BACKENDS)
def test_inverse_of_forward_is_identity_with_opposite_log_det(backend):
    flow = make_flow(backend)
    x = torch.randn(3, 7, DIM, dtype=torch.float64)
    y, log_det = flow(x)
    x_back, log_det_inverse = flow.inverse(y)
    assert y.shape == x.shape and log_det.shape == (3, 7)
    assert not torch.allclose(y, x, atol=1e-3), "the flow under test should not be the identity"
    # AllInOneBlock's rotation is stored in float32, so its inverse is exact to ~1e-7.
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_det_inverse, -log_det, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_log_det_matches_autograd_jacobian(backend, direction):
    flow = make_flow(backend)
    fn = flow.forward if direction == "forward" else flow.inverse
    points = 1.5 * torch.randn(4, DIM, dtype=torch.float64)
    _, log_det = fn(points)
    for point, claimed in zip(points, log_det):
        jacobian = torch.autograd.functional.jacobian(lambda v: fn(v)[0], point)
        sign, logabsdet = torch.linalg.slogdet(jacobian)
        assert sign != 0
        torch.testing.assert_close(claimed, logabsdet, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clamping_keeps_large_inputs_finite_and_bounds_the_volume_change(backend):
    clamp, num_flows = 1.0, 3
    flow = make_flow(backend, num_flows=num_flows, clamp=clamp).float()
    x = 1e4 * torch.randn(64, DIM)
    y, log_det = flow(x)
    x_back, log_det_inverse = flow.inverse(y)
    for tensor in (y, log_det, x_back, log_det_inverse):
        assert torch.isfinite(tensor).all()
    # Each affine transform changes log-volume by at most clamp per dimension; AllInOneBlock
    # adds its input-independent global scaling, measured here at the origin-free bound.
    global_scale = _global_log_scale(flow)
    assert (log_det.abs() <= num_flows * clamp * DIM + global_scale + 1e-3).all()
    # The same flow with the clamp effectively off overflows on these inputs: the check
    # above is a property of the clamp, not of small weights.
    unclamped = make_flow(backend, num_flows=num_flows, clamp=1e6).float()
    assert not torch.isfinite(unclamped(x)[1]).all()


def _global_log_scale(flow: Flow) -> float:
    """|log det| of AllInOneBlock's learned global affine scaling (0 for other back ends)."""
    total = 0.0
    for module in flow.modules():
        if hasattr(module, "global_scale") and hasattr(module, "global_scale_activation"):
            with torch.no_grad():
                total += float(module.global_scale_activation(module.global_scale).log().abs().sum())
    return total


@pytest.mark.parametrize("backend", BACKENDS + ["identity"])
def test_zero_transforms_is_exactly_the_identity(backend):
    flow = build_flow(backend, DIM, num_flows=0)
    assert isinstance(flow, IdentityFlow)
    x = torch.randn(2, 3, DIM)
    y, log_det = flow(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(2, 3))
    x_back, log_det_inverse = flow.inverse(x)
    assert torch.equal(x_back, x) and torch.equal(log_det_inverse, torch.zeros(2, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_inputs_propagate_by_default_and_raise_when_strict(backend):
    flow = make_flow(backend).float()
    x = torch.randn(4, DIM)
    x[1, 2] = float("nan")
    y, _ = flow(x)  # no exception: the training loop's divergence guard sees the NaN loss
    assert not torch.isfinite(y).all() and bool(flow.last_nonfinite)
    flow.strict = True
    with pytest.raises(FloatingPointError, match=backend):
        flow(x)
    flow(torch.randn(4, DIM))  # finite inputs pass in strict mode
    assert not bool(flow.last_nonfinite)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_every_trainable_parameter(backend):
    flow = make_flow(backend).float()
    y, log_det = flow(torch.randn(16, DIM))
    (y.square().sum() - log_det.sum()).backward()
    for name, parameter in flow.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_registry_names_aliases_and_errors():
    assert {"freia", "freia_allinone", "freia_glow", "nflows", "nflows_coupling", "nflows_maf", "identity"} <= set(FLOW_BACKENDS)
    assert type(build_flow("freia", 4, 1)) is type(build_flow("freia_allinone", 4, 1))
    with pytest.raises(ValueError, match="unknown flow back end"):
        build_flow("gin", 4, 1)
    with pytest.raises(ValueError, match="dim >= 2"):
        build_flow("freia_glow", 1, 1)
    with pytest.raises(ValueError, match="last dimension"):
        build_flow("nflows", 4, 1)(torch.randn(3, 5))


def test_table_5_1_hyperparameters_shape_the_conditioners():
    # mopgfm/mofop row of Table 5.1: 1 flow, 8 coupling-block layers, coupling dim 64.
    flow = build_flow("freia_allinone", 6, num_flows=1, coupling_layers=8, coupling_width=64)
    linears = [m for m in flow.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 9  # 8 hidden layers + output layer, one conditioner per block
    assert all(m.out_features == 64 for m in linears[:-1])
