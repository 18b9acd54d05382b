"""Normalizing flows behind one small interface, with FrEIA and nflows as back ends.

A :class:`Flow` is an invertible map ``f: R^D -> R^D`` with a tractable Jacobian:

* ``forward(x)  -> (y = f(x),      log|det J_f(x)|)``
* ``inverse(y)  -> (x = f^-1(y),   log|det J_{f^-1}(y)|)``

on tensors of shape ``[..., D]`` (leading dimensions are flattened for the back end and
restored afterwards; the log-determinants have the leading shape ``[...]``). The flows are
used in two roles in the generalized f-mean thesis (seed 000): as the parameterized
invertible function ``f_psi`` of the f-mean (eq. 4.1) and as a transformation of a posterior
whose density follows from the change of variables (eq. 3.11, eq. 4.8).

Back ends are chosen by name from ``FLOW_BACKENDS`` (configs and sweeps use the names):

``freia_allinone`` (alias ``freia``)
    FrEIA ``AllInOneBlock``: affine coupling with soft clamping of the log-scale
    (``affine_clamping``), a learned input-independent per-dimension affine map and a fixed
    random rotation (``permute_soft=True``) between blocks. This is the block the thesis code
    chained (MMVAE_Hub ``AffineFlow``).
``freia_glow``
    FrEIA ``GLOWCouplingBlock`` (both halves transformed, log-scale soft-clamped with
    ``clamp * 0.636 * atan(s / clamp)``) followed by a fixed ``PermuteRandom``.
``nflows_coupling`` (alias ``nflows``)
    nflows ``AffineCouplingTransform`` with alternating binary masks, each followed by a
    fixed ``RandomPermutation``.
``nflows_maf``
    nflows ``MaskedAffineAutoregressiveTransform`` (MADE conditioner, ``coupling_layers``
    masked layers) followed by ``ReversePermutation``. Its inverse is sequential over the
    ``D`` dimensions (D conditioner passes): cheap forward, slow inverse. Fine where only
    the forward is needed (``mofop``) or for small latent spaces.
``identity``
    the identity map with zero log-determinant; also what every back end returns for
    ``num_flows=0``.

Scale clamping. Every affine back end bounds the per-dimension log-scale of one transform
by ``clamp``, so a single flow changes volume by at most ``exp(clamp)`` per dimension and
transform. FrEIA does it itself (``affine_clamping`` / ``clamp``; FrEIA 0.2's AllInOneBlock
uses ``clamp * tanh(a)``, not the later ``clamp * tanh(a / clamp)``, see anchors-infra 7).
nflows 0.14 has no clamp argument: its coupling scale is ``sigmoid(a + 2) + 1e-3`` (log-scale
in ``(-6.9, 0.001)``, contracting only) and its MAF scale ``softplus(a) + 1e-3``
(unbounded above). Our nflows back ends subclass those two transforms and replace only the
map from the conditioner's raw output to the scale by ``exp(clamp * tanh(a / clamp))``; the
masking, conditioners, autoregressive inversion and log-det bookkeeping stay nflows'.

Non-finite values. A flow never raises on NaN/inf by default: the platform's divergence
guard counts non-finite *losses* and decides (skip the step, stop the trial), and raising
deep inside a forward would bypass it and kill a whole Ray worker. NaN therefore propagates
to the loss. ``strict=True`` (for debugging and tests) raises ``FloatingPointError`` naming
the back end and the direction instead. ``Flow.last_nonfinite`` (a 0-d bool tensor, so
that checking costs no device sync until someone reads it) records whether the last call
produced non-finite values, for logging.

Randomness. The fixed permutations/rotations of FrEIA are drawn from numpy's global RNG
(FrEIA 0.2 API), nflows' ``RandomPermutation`` from torch's; the platform seeds both, so a
rerun with the same seed builds the same flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from nflows.transforms import (
    AffineCouplingTransform,
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    RandomPermutation,
    ReversePermutation,
)
from nflows.utils import torchutils
from torch import Tensor, nn


@dataclass(frozen=True)
class FlowConfig:
    """The hyperparameters of Table 5.1 (seed 000) that shape a flow.

    ``num_flows`` is "Nbr Flows", ``coupling_layers`` is "Nbr Coupling Block layers"
    (hidden layers of each coupling/conditioner network) and ``coupling_width`` is
    "Coupling Dim" (their width).
    """

    backend: str
    dim: int
    num_flows: int
    coupling_layers: int = 2
    coupling_width: int = 64
    clamp: float = 2.0
    strict: bool = False


class Flow(nn.Module):
    """An invertible map on ``[..., D]`` with log-determinants; see the module docstring."""

    backend: str = "abstract"

    def __init__(self, dim: int, strict: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.strict = strict
        self.last_nonfinite = False

    # Back ends implement these on flat ``[N, D]`` batches.
    def _forward_flat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _inverse_flat(self, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), log|det J_f(x)|)`` with shapes ``[..., D]`` and ``[...]``."""
        return self._run(x, self._forward_flat, "forward")

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(f^-1(y), log|det J_{f^-1}(y)|)`` with shapes ``[..., D]`` and ``[...]``."""
        return self._run(y, self._inverse_flat, "inverse")

    def _run(self, inputs: Tensor, fn: Callable, direction: str) -> tuple[Tensor, Tensor]:
        if inputs.shape[-1] != self.dim:
            raise ValueError(f"{self.backend} flow expects last dimension {self.dim}, got {tuple(inputs.shape)}")
        lead = inputs.shape[:-1]
        out, logdet = fn(inputs.reshape(-1, self.dim))
        # Back ends may return a python/0-d zero for volume-preserving maps.
        logdet = torch.as_tensor(logdet, dtype=out.dtype, device=out.device).expand(out.shape[0])
        out, logdet = out.reshape(*lead, self.dim), logdet.reshape(lead)
        self._check_finite(out, logdet, direction)
        return out, logdet

    def _check_finite(self, out: Tensor, logdet: Tensor, direction: str) -> None:
        # One fused reduction, no host sync unless someone reads the flag or strict is on.
        nonfinite = ~(torch.isfinite(out).all() & torch.isfinite(logdet).all())
        self.last_nonfinite = nonfinite
        if self.strict and bool(nonfinite):
            raise FloatingPointError(
                f"{self.backend} flow produced non-finite values in the {direction} direction "
                f"(dim={self.dim}); lower the learning rate or the clamp, or check the inputs"
            )

    def extra_repr(self) -> str:
        return f"backend={self.backend}, dim={self.dim}"


class IdentityFlow(Flow):
    """Exactly the identity, log-determinant exactly zero (``num_flows=0``)."""

    backend = "identity"

    def _forward_flat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])

    def _inverse_flat(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y, y.new_zeros(y.shape[0])


def mlp(in_features: int, out_features: int, hidden_layers: int, hidden_width: int) -> nn.Sequential:
    """The coupling conditioner: ``hidden_layers`` ReLU layers of ``hidden_width`` units."""
    if hidden_layers < 1:
        raise ValueError(f"hidden_layers must be >= 1, got {hidden_layers}")
    layers: list[nn.Module] = [nn.Linear(in_features, hidden_width), nn.ReLU()]
    for _ in range(hidden_layers - 1):
        layers += [nn.Linear(hidden_width, hidden_width), nn.ReLU()]
    layers.append(nn.Linear(hidden_width, out_features))
    return nn.Sequential(*layers)


class _FreiaFlow(Flow):
    """A FrEIA ``SequenceINN`` of block classes (FrEIA 0.2 rejects block instances)."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__(config.dim, config.strict)
        _require_split(config)

        def subnet(c_in: int, c_out: int) -> nn.Module:
            return mlp(c_in, c_out, config.coupling_layers, config.coupling_width)

        self.inn = Ff.SequenceINN(config.dim)
        for _ in range(config.num_flows):
            self._append_block(subnet, config.clamp)

    def _append_block(self, subnet: Callable, clamp: float) -> None:
        raise NotImplementedError

    def _forward_flat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.inn(x, jac=True)

    def _inverse_flat(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.inn(y, rev=True, jac=True)


class FreiaAllInOneFlow(_FreiaFlow):
    backend = "freia_allinone"

    def _append_block(self, subnet: Callable, clamp: float) -> None:
        # permute_soft: a random rotation instead of a hard permutation, as in the thesis
        # code; it keeps its matrix in frozen nn.Parameters (never perturb those by hand).
        self.inn.append(Fm.AllInOneBlock, subnet_constructor=subnet, affine_clamping=clamp, permute_soft=True)


class FreiaGlowFlow(_FreiaFlow):
    backend = "freia_glow"

    def _append_block(self, subnet: Callable, clamp: float) -> None:
        self.inn.append(Fm.GLOWCouplingBlock, subnet_constructor=subnet, clamp=clamp)
        self.inn.append(Fm.PermuteRandom)


def _clamped_scale(unconstrained: Tensor, clamp: float) -> Tensor:
    """``exp(clamp * tanh(a / clamp))``: log-scale in ``(-clamp, clamp)``, slope 1 at 0."""
    return torch.exp(clamp * torch.tanh(unconstrained / clamp))


class ClampedAffineCouplingTransform(AffineCouplingTransform):
    """nflows affine coupling whose log-scale is soft-clamped to ``(-clamp, clamp)``."""

    def __init__(self, mask: Tensor, transform_net_create_fn: Callable, clamp: float) -> None:
        super().__init__(mask, transform_net_create_fn)
        self.clamp = clamp

    def _scale_and_shift(self, transform_params: Tensor) -> tuple[Tensor, Tensor]:
        # Same split as nflows 0.14 (shift first, then the raw scale), bounded scale map.
        unconstrained_scale = transform_params[:, self.num_transform_features :, ...]
        shift = transform_params[:, : self.num_transform_features, ...]
        return _clamped_scale(unconstrained_scale, self.clamp), shift


class ClampedMaskedAffineAutoregressiveTransform(MaskedAffineAutoregressiveTransform):
    """nflows MAF whose log-scale is soft-clamped to ``(-clamp, clamp)``."""

    def __init__(self, features: int, hidden_features: int, num_blocks: int, clamp: float) -> None:
        super().__init__(
            features=features,
            hidden_features=hidden_features,
            num_blocks=num_blocks,
            use_residual_blocks=False,
        )
        self.clamp = clamp

    def _elementwise_forward(self, inputs: Tensor, autoregressive_params: Tensor) -> tuple[Tensor, Tensor]:
        unconstrained_scale, shift = self._unconstrained_scale_and_shift(autoregressive_params)
        log_scale = self.clamp * torch.tanh(unconstrained_scale / self.clamp)
        outputs = log_scale.exp() * inputs + shift
        return outputs, torchutils.sum_except_batch(log_scale, num_batch_dims=1)

    def _elementwise_inverse(self, inputs: Tensor, autoregressive_params: Tensor) -> tuple[Tensor, Tensor]:
        unconstrained_scale, shift = self._unconstrained_scale_and_shift(autoregressive_params)
        log_scale = self.clamp * torch.tanh(unconstrained_scale / self.clamp)
        outputs = (inputs - shift) * (-log_scale).exp()
        return outputs, -torchutils.sum_except_batch(log_scale, num_batch_dims=1)


class _ContextFreeNet(nn.Module):
    """nflows calls conditioners as ``net(inputs, context)``; ours take no context."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(inputs)


class _NflowsFlow(Flow):
    """An nflows ``CompositeTransform``; nflows' forward is our forward."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__(config.dim, config.strict)
        self.transform = CompositeTransform(self._transforms(config))

    def _transforms(self, config: FlowConfig) -> list[nn.Module]:
        raise NotImplementedError

    def _forward_flat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform(x)

    def _inverse_flat(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(y)


class NflowsCouplingFlow(_NflowsFlow):
    backend = "nflows_coupling"

    def _transforms(self, config: FlowConfig) -> list[nn.Module]:
        _require_split(config)

        def conditioner(c_in: int, c_out: int) -> nn.Module:
            return _ContextFreeNet(mlp(c_in, c_out, config.coupling_layers, config.coupling_width))

        transforms: list[nn.Module] = []
        for i in range(config.num_flows):
            # Alternate which half conditions the other; the random permutation in between
            # changes the halves from one transform to the next.
            mask = (torch.arange(config.dim) + i) % 2
            transforms.append(ClampedAffineCouplingTransform(mask, conditioner, config.clamp))
            transforms.append(RandomPermutation(config.dim))
        return transforms


class NflowsMafFlow(_NflowsFlow):
    backend = "nflows_maf"

    def _transforms(self, config: FlowConfig) -> list[nn.Module]:
        transforms: list[nn.Module] = []
        for _ in range(config.num_flows):
            transforms.append(
                ClampedMaskedAffineAutoregressiveTransform(
                    features=config.dim,
                    hidden_features=config.coupling_width,
                    num_blocks=config.coupling_layers,
                    clamp=config.clamp,
                )
            )
            transforms.append(ReversePermutation(config.dim))
        return transforms


def _require_split(config: FlowConfig) -> None:
    if config.num_flows > 0 and config.dim < 2:
        raise ValueError(f"coupling back end {config.backend!r} needs dim >= 2 to split, got dim={config.dim}")


FlowFactory = Callable[[FlowConfig], Flow]
FLOW_BACKENDS: dict[str, FlowFactory] = {}


def register_flow_backend(*names: str) -> Callable[[FlowFactory], FlowFactory]:
    """Make a ``FlowConfig -> Flow`` factory buildable under each of ``names``."""

    def register(factory: FlowFactory) -> FlowFactory:
        for name in names:
            if name in FLOW_BACKENDS:
                raise ValueError(f"flow back end {name!r} registered twice")
            FLOW_BACKENDS[name] = factory
        return factory

    return register


register_flow_backend("identity")(lambda config: IdentityFlow(config.dim, config.strict))
register_flow_backend("freia_allinone", "freia")(FreiaAllInOneFlow)
register_flow_backend("freia_glow")(FreiaGlowFlow)
register_flow_backend("nflows_coupling", "nflows")(NflowsCouplingFlow)
register_flow_backend("nflows_maf")(NflowsMafFlow)


def build_flow(
    backend: str,
    dim: int,
    num_flows: int,
    coupling_layers: int = 2,
    coupling_width: int = 64,
    clamp: float = 2.0,
    strict: bool = False,
) -> Flow:
    """Build a flow by back-end name; ``num_flows=0`` gives the exact identity.

    Args:
        backend: a key of ``FLOW_BACKENDS`` (``freia_allinone``, ``freia_glow``,
            ``nflows_coupling``, ``nflows_maf``, ``identity`` and aliases).
        dim: D, the event dimension.
        num_flows: chained transforms ("Nbr Flows", Table 5.1 of seed 000).
        coupling_layers: hidden layers per conditioner ("Nbr Coupling Block layers").
        coupling_width: conditioner width ("Coupling Dim").
        clamp: bound on each transform's per-dimension log-scale (see module docstring).
        strict: raise ``FloatingPointError`` on non-finite outputs instead of propagating NaN.
    """
    if backend not in FLOW_BACKENDS:
        raise ValueError(f"unknown flow back end {backend!r}; registered: {', '.join(sorted(FLOW_BACKENDS))}")
    if num_flows < 0:
        raise ValueError(f"num_flows must be >= 0, got {num_flows}")
    if not clamp > 0:
        raise ValueError(f"clamp must be > 0, got {clamp}")
    config = FlowConfig(backend, dim, num_flows, coupling_layers, coupling_width, clamp, strict)
    if num_flows == 0:
        return IdentityFlow(dim, strict)
    return FLOW_BACKENDS[backend](config)
