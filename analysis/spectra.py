"""Spectra of low-rank deltas from their factors, without forming ΔW: thin SVDs, the numerical rank at the
factors' storage precision, effective and stable rank, energy, and the Grassmann similarity of two deltas'
subspaces beside its chance level. The formulas are in analysis/rank.py's docstring."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

ENERGY_KS = (8, 16, 32, 64)
STORED_SINGULAR_VALUES = 64
SIMILARITY_MAX_K = 64


@contextmanager
def _one_thread():
    """Many small factorizations (r columns): threads only synchronize, 1000x slower on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)



def low_rank_svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of b @ a ([out, r] @ [r, in]) without forming it: U [out, r], S [r], Vh [r, in]."""
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return qb @ u, s, vh @ qa.T



def dense_tolerance(s_max: float, shape, dtype: torch.dtype = torch.float64) -> float:
    """numpy/LAPACK matrix_rank's tolerance σ_max · max(m, n) · eps, with the eps of the dtype the matrix was
    stored in (a float32 delta read as float64 still carries float32 rounding)."""
    return float(s_max) * max(shape) * torch.finfo(dtype).eps



def factor_tolerance(b: torch.Tensor, a: torch.Tensor, dtypes: tuple | None = None) -> float:
    """The size of the noise that storing B and A in their dtypes puts into B @ A: singular values at or below it
    cannot be told from rounding.

    Rounding stores x as x(1 + δ), |δ| ≤ u = eps/2. With the δ independent and uniform (the probabilistic model of
    rounding error, Higham & Mary 2019) the noise N = E_B·A + B·E_A has E‖N‖_F² = (u_B² + u_A²)/3 ·
    Σ_k ‖B[:, k]‖²‖A[k]‖², and no singular value moves further than ‖N‖₂ ≤ ‖N‖_F (Weyl). The rounding noise's
    own singular values sit 5-10x below it; the worst-case bound u(‖B‖_F‖A‖₂ + ‖B‖₂‖A‖_F) is 10x above and would
    cut real directions of bf16 factors. numpy's tolerance for the float64 SVD itself is the floor."""
    dtype_b, dtype_a = dtypes or (b.dtype, a.dtype)
    u_b, u_a = torch.finfo(dtype_b).eps / 2, torch.finfo(dtype_a).eps / 2
    weight = float(b.square().sum(0) @ a.square().sum(1))  # Σ_k ‖B[:, k]‖²‖A[k]‖²
    noise = math.sqrt((u_b ** 2 + u_a ** 2) / 3 * weight)
    return max(noise, dense_tolerance(float(b.norm() * a.norm()), (b.shape[0], a.shape[1])))  # ‖B‖_F‖A‖_F ≥ σ_max



def profile_from_singular_values(s: torch.Tensor, shape, tolerance: float | None = None) -> dict:
    """rank_profile from descending singular values of a matrix of `shape` (all of them: `energy_in_rank` is a
    share of Σσ²). `rank` counts σ > tolerance (default: numpy's for float64); the other figures use those σ."""
    s = s.to(torch.float64)
    total = float(s.square().sum())
    if total > 0.0 and tolerance is None:
        tolerance = dense_tolerance(s[0], shape)
    s = s[s > tolerance] if total > 0.0 else s[:0]
    if not len(s):  # a zero delta, or nothing above the noise
        return {"rank": 0, "tolerance": tolerance or 0.0, "singular_values": [], "effective_rank": 0.0,
                "stable_rank": 0.0, "energy_in_rank": 0.0 if total else 1.0, "energy": {str(k): 1.0 for k in ENERGY_KS}}
    energy = s.square()
    p = s / s.sum()
    cumulative = energy.cumsum(0) / energy.sum()
    return {
        "rank": len(s),
        "tolerance": tolerance,
        "singular_values": [float(v) for v in s[:STORED_SINGULAR_VALUES]],
        "effective_rank": math.exp(float(-(p * p.log()).sum())),  # Roy & Vetterli 2007
        "stable_rank": float(energy.sum() / energy[0]),
        "energy_in_rank": float(energy.sum()) / total,  # what the noise directions leave: 1 - 1e-14 in fp32
        "energy": {str(k): float(cumulative[min(k, len(s)) - 1]) for k in ENERGY_KS},
    }



def rank_profile(delta: torch.Tensor) -> dict:
    """Singular values (top 64), numerical rank (numpy's tolerance with the eps of delta's dtype), entropy
    effective rank, stable rank, energy captured at k = 8/16/32/64."""
    s = torch.linalg.svdvals(delta.to(torch.float64))
    tolerance = dense_tolerance(s[0], tuple(delta.shape), delta.dtype) if len(s) else None
    return profile_from_singular_values(s, tuple(delta.shape), tolerance)



def _grassmann(basis_a: torch.Tensor, basis_b: torch.Tensor, k: int) -> float:
    """Mean cos² of the principal angles between span(basis_a[:, :k]) and span(basis_b[:, :k]), in [0, 1]."""
    cosines = torch.linalg.svdvals(basis_a[:, :k].T @ basis_b[:, :k])
    return float(cosines.clamp(max=1.0).square().mean())



def chance_similarity(k: int, n: int) -> tuple[float, float]:
    """Mean and sd of the Grassmann similarity between a k-dim subspace of R^n and a uniformly random one:
    E tr(P_a P_b)/k = k/n, and Var tr(P_a P_b) = 2k²(n−k)² / (n²(n−1)(n+2))."""
    sd = math.sqrt(2) * (n - k) / (n * math.sqrt((n - 1) * (n + 2))) if n > 1 else 0.0
    return k / n, sd



def subspace_similarity(delta_a: torch.Tensor, delta_b: torch.Tensor, k: int | None = None) -> dict:
    """Grassmann similarity of the top-k left (column) and right (row) singular subspaces of two deltas.

    Cosines of the principal angles are the singular values of U_a[:, :k]ᵀ U_b[:, :k]; the result is their mean
    square (1: same subspace, 0: orthogonal; `chance` ± `chance_sd` is what random k-dim subspaces give).
    k defaults to the smaller measured rank (numpy's tolerance for each delta's dtype), at most 64."""
    if delta_a.shape != delta_b.shape:
        raise ValueError(f"deltas of different shapes: {tuple(delta_a.shape)} vs {tuple(delta_b.shape)}")
    ua, sa, vha = torch.linalg.svd(delta_a.to(torch.float64), full_matrices=False)
    ub, sb, vhb = torch.linalg.svd(delta_b.to(torch.float64), full_matrices=False)
    return _similarity(ua, vha, _dense_rank(sa, delta_a), ub, vhb, _dense_rank(sb, delta_b), k)



def _dense_rank(s: torch.Tensor, delta: torch.Tensor) -> int:
    return int((s > dense_tolerance(s[0], tuple(delta.shape), delta.dtype)).sum()) if len(s) and s[0] > 0 else 0



def _similarity(ua, vha, rank_a, ub, vhb, rank_b, k=None) -> dict:
    k = min(rank_a, rank_b, SIMILARITY_MAX_K) if k is None else min(k, rank_a, rank_b)
    if k < 1:
        return {"k": 0, "left": None, "right": None, "chance_left": None, "chance_right": None,
                "chance_left_sd": None, "chance_right_sd": None}
    chance_left, sd_left = chance_similarity(k, ua.shape[0])
    chance_right, sd_right = chance_similarity(k, vha.shape[1])
    return {"k": k, "left": _grassmann(ua, ub, k), "right": _grassmann(vha.T, vhb.T, k),
            "chance_left": chance_left, "chance_right": chance_right,
            "chance_left_sd": sd_left, "chance_right_sd": sd_right}



def truncate_factors(factors: dict, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each module's (B, A) cut to its top-k singular directions; modules of rank ≤ k are kept exactly."""
    out = {}
    with _one_thread():
        for name, (b, a) in factors.items():
            if k >= b.shape[1]:
                out[name] = (b, a)
                continue
            u, s, vh = low_rank_svd(b, a)
            out[name] = (u[:, :k] * s[:k], vh[:k])
    return out



def spectra(factors: dict, dtypes: dict) -> dict[str, tuple]:
    """Module -> (U, S, Vh, rank tolerance) of each delta B @ A, from the factors (no dense ΔW)."""
    with _one_thread():
        return {name: (*low_rank_svd(b, a), factor_tolerance(b, a, dtypes.get(name)))
                for name, (b, a) in factors.items()}



def measured_rank(spectra_: dict) -> tuple[int, float]:
    """(the largest numerical rank over modules, the share of all modules' energy Σσ² in each one's top that-many
    directions)."""
    rank = max((int((s > tol).sum()) for _, s, _, tol in spectra_.values()), default=0)
    total = sum(float(s.square().sum()) for _, s, _, _ in spectra_.values())
    kept = sum(float(s[:rank].square().sum()) for _, s, _, _ in spectra_.values())
    return rank, (kept / total if total > 0 else 1.0)
