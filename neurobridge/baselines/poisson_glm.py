"""Penalised Poisson regression of many outputs at once, by batched Newton's method.

The solver of the smoothing + GLM baseline (:mod:`neurobridge.baselines.smoothing`), usable on
its own: ``fit_poisson_glm(x [T, H], y [T, K], l2=...)`` fits one GLM per column of ``y``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PoissonGLMFit", "fit_poisson_glm", "torch_threads"]

# Hessians use a table of pairwise feature products [T, (H+1)(H+2)/2] (float64): built once
# per fit up to this many elements (~200 MB), else rebuilt in chunks of _PAIR_CHUNK_ELEMS each
# Newton iteration.
_PAIR_TABLE_MAX_ELEMS = 25_000_000
_PAIR_CHUNK_ELEMS = 4_000_000
# Newton stops when every unit's squared Newton decrement (~2x the objective gap) is below this.
_NEWTON_TOL = 1e-12


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set torch's (process-wide) intra-op thread count; ``None`` leaves it alone."""
    previous = torch.get_num_threads()
    if num_threads is None or num_threads == previous:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pair_products(x: torch.Tensor) -> torch.Tensor:
    """``[t, m]`` with ``m = h (h + 1) / 2`` columns ``x[:, i] * x[:, j]`` for ``i <= j`` (row-major
    upper triangle, the order of ``torch.triu_indices``)."""
    n_t, h = x.shape
    out = torch.empty(n_t, h * (h + 1) // 2, dtype=x.dtype)
    col = 0
    for i in range(h):
        torch.mul(x[:, i:], x[:, i : i + 1], out=out[:, col : col + h - i])
        col += h - i
    return out


@dataclass
class PoissonGLMFit:
    """A fitted Poisson GLM for ``K`` outputs on ``H`` features."""

    weight: np.ndarray  #: ``[H, K]``
    bias: np.ndarray  #: ``[K]``
    grad_max: float  #: max ``|gradient|`` of the penalised objective at the solution
    eta_max: np.ndarray  #: ``[K]`` largest log-rate the fit gives on its training data


def fit_poisson_glm(
x: np.ndarray, y: np.ndarray, *, l2: float, max_iter: int = 100, min_rate: float = 1e-3
) -> PoissonGLMFit:
    """Penalised Poisson regression of all columns of ``y`` on ``x``, by batched Newton.

    Objective per held-out unit ``k`` (the units are independent given the features)::

        mean_t [exp(eta_tk) - y_tk eta_tk] + l2/2 ||W_k||^2,   eta = x W + b

    which is convex (strictly in ``W`` for ``l2 > 0``). All units are solved together in
    float64: the ``K`` Hessians ``[H+1, H+1]`` come from one matrix product per iteration,
    followed by batched Cholesky solves and a per-unit backtracking line search, so every
    unit's objective decreases monotonically. Converged when every unit's squared Newton
    decrement is below ``1e-12``; a ``RuntimeWarning`` is raised if that is not reached within
    ``max_iter`` iterations or the line search stalls.
    """
    n_t, n_h = x.shape
    n_k = y.shape[1]
    xa = torch.from_numpy(np.concatenate([x, np.ones((n_t, 1))], axis=1))  # [T, H+1]
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))  # [T, K]
    penalty = torch.full((n_h + 1,), l2, dtype=torch.float64)
    penalty[-1] = 0.0  # intercept is not penalised
    # A tiny ridge keeps the Hessian positive definite (silent units, l2 = 0, collinearity).
    ridge = torch.full((n_h + 1,), 1e-10, dtype=torch.float64)
    theta = torch.zeros(n_h + 1, n_k, dtype=torch.float64)
    theta[-1] = torch.log(yt.mean(dim=0).clamp_min(min_rate))
    # Hessians of all units from one matrix product: for the upper triangle (i <= j),
    # hess_k[i, j] = mean_t rate_tk * xa_ti * xa_tj = (rate.T @ pairs)[k, (i, j)] / T, where
    # pairs[t, (i, j)] = xa_ti * xa_tj is built once (or chunk by chunk when it is large).
    iu, ju = torch.triu_indices(n_h + 1, n_h + 1)
    n_pairs = iu.numel()
    if n_t * n_pairs <= _PAIR_TABLE_MAX_ELEMS:
        pair_chunks = [(0, n_t, _pair_products(xa))]
    else:
        step_t = max(1, _PAIR_CHUNK_ELEMS // n_pairs)
        pair_chunks = [(t0, min(n_t, t0 + step_t), None) for t0 in range(0, n_t, step_t)]

    def objective(th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective [K], eta [T, K])`` at ``th``."""
        eta = xa @ th
        data = (torch.exp(eta) - yt * eta).mean(dim=0)
        return data + 0.5 * (penalty[:, None] * th * th).sum(dim=0), eta

    obj, eta = objective(theta)
    converged = False
    for _ in range(max_iter):
        rate = torch.exp(eta)  # [T, K]
        grad = xa.T @ (rate - yt) / n_t + penalty[:, None] * theta  # [H+1, K]
        flat = torch.zeros(n_k, n_pairs, dtype=torch.float64)
        for t0, t1, pairs in pair_chunks:
            if pairs is None:
                pairs = _pair_products(xa[t0:t1])
            flat += rate[t0:t1].T @ pairs
        hess = torch.empty(n_k, n_h + 1, n_h + 1, dtype=torch.float64)
        hess[:, iu, ju] = flat
        hess[:, ju, iu] = flat
        hess /= n_t
        hess += torch.diag(penalty + ridge)[None]
        chol, info = torch.linalg.cholesky_ex(hess)
        if bool((info != 0).any()):  # numerically indefinite: fall back to a damped solve
            hess += torch.eye(n_h + 1, dtype=torch.float64)[None] * 1e-6
            chol = torch.linalg.cholesky(hess)
        step = torch.cholesky_solve(-grad.T[:, :, None], chol)[:, :, 0].T  # [H+1, K]
        decrement = -(grad * step).sum(dim=0)  # squared Newton decrement, >= 0
        active = decrement >= _NEWTON_TOL
        if not bool(active.any()):
            converged = True
            break
        # Per-unit backtracking (Armijo) line search.
        t_step = torch.ones(n_k, dtype=torch.float64)
        new_theta, new_obj, new_eta = theta.clone(), obj.clone(), eta.clone()
        progressed = False
        for _ls in range(40):
            cand = theta + step * t_step[None, :]
            cand_obj, cand_eta = objective(cand)
            ok = torch.isfinite(cand_obj) & (cand_obj <= obj - 0.25 * t_step * decrement)
            accept = ok & active
            progressed = progressed or bool(accept.any())
            new_theta[:, accept] = cand[:, accept]
            new_obj[accept] = cand_obj[accept]
            new_eta[:, accept] = cand_eta[:, accept]
            active = active & ~ok
            if not bool(active.any()):
                break
            t_step = torch.where(active, t_step * 0.5, t_step)
        theta, obj, eta = new_theta, new_obj, new_eta
        if not progressed:  # no unit could decrease its objective: numerical floor reached
            break
    rate = torch.exp(eta)
    grad = xa.T @ (rate - yt) / n_t + penalty[:, None] * theta
    grad_max = float(grad.abs().max())
    if not converged or not math.isfinite(grad_max):
        warnings.warn(
            f"Poisson GLM fit did not converge within {max_iter} Newton "
            f"iterations (max |grad| = {grad_max:.2e}).",
            RuntimeWarning,
            stacklevel=2,
        )
    return PoissonGLMFit(
        weight=theta[:-1].numpy().copy(),
        bias=theta[-1].numpy().copy(),
        grad_max=grad_max,
        eta_max=eta.max(dim=0).values.numpy().copy(),
    )
