"""The Deep CCA total correlation against independent computations and data of known correlation.

The reference whitens by Cholesky (``S = L L^T``, ``L^{-1} S12 L2^{-T}``) in numpy, where the
code under test uses the eigen inverse square root in torch: both whitenings differ by an
orthogonal factor, so the singular values (the canonical correlations) agree.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch
from scipy.linalg import solve_triangular

from models.dcca import dcca_loss, pairwise_total_correlation, total_correlation

CORRELATIONS = (0.9, 0.6, 0.3, 0.0, 0.0)


def numpy_total_correlation(x: np.ndarray, y: np.ndarray, ridge: float = 1e-4, top_k=None) -> float:
    n = x.shape[0]
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    l1 = np.linalg.cholesky(x.T @ x / (n - 1) + ridge * np.eye(x.shape[1]))
    l2 = np.linalg.cholesky(y.T @ y / (n - 1) + ridge * np.eye(y.shape[1]))
    left = solve_triangular(l1, x.T @ y / (n - 1), lower=True)  # L1^{-1} S12
    t = solve_triangular(l2, left.T, lower=True).T  # (L2^{-1} (L1^{-1} S12)^T)^T = L1^{-1} S12 L2^{-T}
    return float(np.linalg.svd(t, compute_uv=False)[:top_k].sum())


def torch_cholesky_total_correlation(h1, h2, ridge: float = 1e-4):
    """The same in torch, for reference gradients (Cholesky's backward has no eigenvalue gaps)."""
    n = h1.shape[0]
    h1, h2 = h1 - h1.mean(0), h2 - h2.mean(0)
    l1 = torch.linalg.cholesky(h1.T @ h1 / (n - 1) + ridge * torch.eye(h1.shape[1], dtype=h1.dtype))
    l2 = torch.linalg.cholesky(h2.T @ h2 / (n - 1) + ridge * torch.eye(h2.shape[1], dtype=h2.dtype))
    left = torch.linalg.solve_triangular(l1, h1.T @ h2 / (n - 1), upper=False)
    t = torch.linalg.solve_triangular(l2, left.T, upper=False).T
    return torch.linalg.svdvals(t).sum()


def linear_views(n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 5-D views whose canonical correlations are ``CORRELATIONS`` by design.

    Coordinate ``j`` of each view is ``sqrt(rho_j) s_j + sqrt(1 - rho_j) noise`` with a shared
    ``s ~ N(0, I)`` and independent unit noise, so ``corr(x_j, y_j) = rho_j`` and all other
    cross-correlations vanish; then each view goes through its own invertible linear map and
    shift, which leave canonical correlations unchanged.
    """
    rng = np.random.default_rng(seed)
    rho = np.array(CORRELATIONS)
    shared = rng.standard_normal((n, 5))
    x = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal((n, 5))
    y = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal((n, 5))

    def invertible():  # orthogonal times scales in [0.5, 3]: condition number 6
        q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
        return q @ np.diag(rng.uniform(0.5, 3.0, 5))

    return torch.from_numpy(x @ invertible() + 1.5), torch.from_numpy(y @ invertible() - 0.5)


@pytest.mark.parametrize(
    "n, d1, d2, ridge",
    [(50, 4, 3, 1e-4), (200, 6, 6, 1e-4), (30, 2, 7, 1e-2), (7, 10, 3, 1e-3)],  # last: d1 > N
)
def test_matches_cholesky_whitened_numpy(n, d1, d2, ridge):
    rng = np.random.default_rng(n + d1)
    x = rng.standard_normal((n, d1))
    y = x[:, :1] @ rng.standard_normal((1, d2)) + rng.standard_normal((n, d2))  # some correlation
    for top_k in (None, 1, 2):
        got = total_correlation(torch.from_numpy(x), torch.from_numpy(y), ridge=ridge, top_k=top_k)
        assert got.dtype == torch.float64 and got.dim() == 0
        assert got.item() == pytest.approx(numpy_total_correlation(x, y, ridge, top_k), rel=1e-8)


def test_known_correlations_of_linear_data():
    x, y = linear_views()
    # Sampling error of rho at N = 20000 is ~(1 - rho^2) / sqrt(N) <= 0.007; the two null
    # correlations are biased up by ~sqrt(d / N) each, hence the looser bound on the full sum.
    assert total_correlation(x, y).item() == pytest.approx(1.8, abs=0.05)
    assert total_correlation(x, y, top_k=3).item() == pytest.approx(1.8, abs=0.02)
    assert total_correlation(x, y, top_k=2).item() == pytest.approx(1.5, abs=0.015)
    assert total_correlation(x, y, top_k=1).item() == pytest.approx(0.9, abs=0.01)
    assert total_correlation(x, y, top_k=99).item() == total_correlation(x, y).item()  # clipped
    assert total_correlation(x.float(), y.float()).dtype == torch.float32


def test_three_views_sum_the_pairs():
    rng = np.random.default_rng(3)
    shared = rng.standard_normal((80, 2))
    arrays = [shared @ rng.standard_normal((2, d)) + rng.standard_normal((80, d)) for d in (3, 4, 2)]
    views = [torch.from_numpy(a) for a in arrays]
    got = pairwise_total_correlation(views, top_k=2)
    by_pairs = sum(total_correlation(views[i], views[j], top_k=2) for i, j in combinations(range(3), 2))
    reference = sum(numpy_total_correlation(arrays[i], arrays[j], top_k=2) for i, j in combinations(range(3), 2))
    assert got.item() == pytest.approx(by_pairs.item(), rel=1e-12)
    assert got.item() == pytest.approx(reference, rel=1e-8)
    assert dcca_loss(views, top_k=2).item() == -got.item()


def test_gradient_ascent_on_linear_maps_reaches_the_top_two_correlations():
    x, y = linear_views()
    best = total_correlation(x, y, top_k=2).item()  # ~1.5: the most two projections can reach
    x, y = x.float(), y.float()
    torch.manual_seed(0)
    g1, g2 = torch.nn.Linear(5, 2), torch.nn.Linear(5, 2)
    optimizer = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=0.05)
    start = total_correlation(g1(x), g2(y)).item()
    for _ in range(80):
        optimizer.zero_grad()
        dcca_loss([g1(x), g2(y)]).backward()
        optimizer.step()
    with torch.no_grad():
        end = total_correlation(g1(x), g2(y)).item()
    assert end - start > 0.5
    assert end == pytest.approx(1.5, abs=0.05)
    assert end <= best + 1e-3


@pytest.mark.parametrize("top_k", [None, 1])
def test_gradcheck(top_k):
    torch.manual_seed(0)
    h1 = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: total_correlation(a, b, ridge=1e-2, top_k=top_k), (h1, h2))


@pytest.mark.parametrize("case", ["dead_units", "more_features_than_samples"])
def test_gradient_with_repeated_covariance_eigenvalues(case):
    """Two constant (dead) units, or d > N - 1, make several eigenvalues of S11 equal the ridge:
    plain autograd through eigh gives NaN there; the gradient must match Cholesky whitening's."""
    torch.manual_seed(1)
    if case == "dead_units":
        h1, h2 = torch.randn(100, 5, dtype=torch.float64), torch.randn(100, 4, dtype=torch.float64)
        h1[:, 3:] = 0.7
    else:
        h1, h2 = torch.randn(8, 20, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    grads = []
    for function in (total_correlation, torch_cholesky_total_correlation):
        a, b = h1.clone().requires_grad_(), h2.clone().requires_grad_()
        function(a, b).backward()
        grads.append((a.grad, b.grad))
    (a_got, b_got), (a_ref, b_ref) = grads
    torch.testing.assert_close(a_got, a_ref, rtol=1e-7, atol=1e-9 * a_ref.abs().max().item())
    torch.testing.assert_close(b_got, b_ref, rtol=1e-7, atol=1e-9 * b_ref.abs().max().item())


@pytest.mark.parametrize(
    "shapes",
    [[(5, 3), (4, 2)], [(1, 3), (1, 2)], [(5, 3), (5,)], [(5, 3), (5, 2, 1)], [(5, 3), (5, 2), (6, 2)]],
)
def test_shape_errors_name_the_shapes(shapes):
    views = [torch.randn(shape) for shape in shapes]
    with pytest.raises(ValueError) as error:
        pairwise_total_correlation(views)
    for shape in shapes:
        assert str(shape) in str(error.value)
    if len(views) == 2:
        with pytest.raises(ValueError, match=r"\(5, 3\)|\(1, 3\)"):
            total_correlation(*views)


def test_other_argument_errors():
    with pytest.raises(ValueError, match="at least 2 views"):
        pairwise_total_correlation([torch.randn(5, 2)])
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="top_k"):
        total_correlation(x, x, top_k=0)
    with pytest.raises(ValueError, match="ridge"):
        total_correlation(x, x, ridge=-1.0)
    with pytest.raises(ValueError, match="dtype"):
        total_correlation(x, x.double())
