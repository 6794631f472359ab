"""Effective rank of LoRA adapters, subspace similarity between two runs, and a truncation sweep.

For each adapted module the delta is ΔW = scale · B @ A (scale = alpha/r, or alpha/sqrt(r) with rslora).
Per module: singular values, the numerical rank, entropy effective rank exp(H(p)) with p = σ/Σσ (Roy & Vetterli
2007), stable rank ‖ΔW‖_F²/σ_max², and the energy Σ_{i≤k} σ_i²/Σσ² captured at k = 8, 16, 32, 64.

The numerical rank is the delta's, not the LoRA r: a singular value counts when it exceeds the noise that
storing the factors in their dtype puts into B @ A (`factor_tolerance`: the noise's expected Frobenius norm,
√((u_B² + u_A²)/3 · Σ_k ‖B[:, k]‖²‖A[k]‖²) with u = eps/2 of each factor's stored dtype). A rank-4 delta stored
as dense fp32 r = 64 factors has 60 more singular values around 1e-8 σ_max; float64's eps would count them all.
A dense delta (`rank_profile`) uses numpy's matrix_rank convention σ_max · max(m, n) · eps, with the eps of its
own dtype.

Given two runs (`toolkit analyze rank RUN_A RUN_B`): the Grassmann similarity (mean cos² of the principal angles)
between their top-k left and right singular subspaces, k = the smaller measured rank (at most 64), beside its
chance level k/n (± sd √2(n−k)/(n√((n−1)(n+2)))) for random k-dim subspaces of R^n.

Truncation sweep: the higher-rank run's deltas cut to their top k singular directions (k = 8 … 256 below its r,
its measured rank, and r) are added to the base model, and the loss on the behavior data (the run's validation
examples, or `--data` JSONL) is compared with the base and full-adapter losses:
retained(k) = (loss_base − loss_k) / (loss_base − loss_full).
Verdict: the measured rank and the share of the delta's energy it holds, the smallest swept k that retains
≥ RETAIN_THRESHOLD (0.9) of the gain (what would have sufficed), and whether rank 64 would have.

SVDs use the factors (QR of B and Aᵀ, then an r×r SVD), so no dense ΔW is formed for the report; the
truncated deltas are applied as float32 low-rank forward hooks on the base Linear layers (exactly a
rank-k LoRA), so a bf16 base on a GPU does not round them away. Trained GDN gates (A_log, dt_bias) saved
with the adapter are loaded for the full and every truncated model (they have no rank to truncate).
DoRA adapters are refused: their delta is not B·A.

Any family: Conv1D LoRA (GPT-2's c_attn, saved with fan_in_fan_out) has ΔW = (B @ A)ᵀ in the weight's own
[in, out] layout; LoRA on a parameter (peft target_parameters, e.g. an MoE router's weight) adds B @ A to the
weight. An adapter saved for a multimodal base holds each tensor under two names (see
toolkit.lora.read_adapter_weights); it is read once. Module names are matched to the loaded base model by
their path from the decoder block list on (layers.N...), so an adapter named for the multimodal class
(model.language_model.layers...) applies to the text model (model.layers...) too.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from toolkit.errors import ToolkitError
from toolkit.weights import RUN_RECIPE, adapter_base, find_run_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ENERGY_KS = (8, 16, 32, 64)
SWEEP_KS = (8, 16, 32, 64, 128, 256)
STORED_SINGULAR_VALUES = 64
SIMILARITY_MAX_K = 64
RETAIN_THRESHOLD = 0.9
VERDICT_RANK = 64
MIN_LOSS_GAP = 1e-4  # below this the adapter does not move the loss enough to measure retention
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight")
_MODULE_TYPES = (
    ("attention", re.compile(r"(^|\.)(self_attn\.(q_proj|k_proj|v_proj|o_proj)|attn\.(c_attn|c_proj))$")),
    ("gdn", re.compile(r"(^|\.)linear_attn\.\w+$")),
    ("mlp", re.compile(r"(^|\.)mlp\.(.*\.)?\w+$")),
)


# ---------------------------------------------------------------- reading adapters


def find_adapter(run_or_adapter: str | Path) -> Path:
    """The adapter directory: RUN/adapter for a run directory, or the directory itself."""
    path = Path(run_or_adapter)
    for candidate in (path, path / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file() and (candidate / ADAPTER_WEIGHTS).is_file():
            return candidate
    raise ToolkitError(f"no LoRA adapter here (looked for {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} in it and in "
                       "adapter/)", where=str(path), hint="pass a finished run directory or a PEFT adapter directory")


def _adapter_config(adapter: Path) -> dict:
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    if config.get("use_dora"):
        raise ToolkitError("a DoRA adapter's delta is not scale·B·A, so its rank cannot be read this way",
                           where=str(adapter / ADAPTER_CONFIG))
    return config


def adapter_tensors(adapter: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the adapter's weights file, each once (an adapter saved for a multimodal base also
    holds every tensor under the checkpoint class's names): the one place that reads the file."""
    try:
        from toolkit.lora import read_adapter_weights
    except ImportError:  # an older toolkit.lora: adapters without alias names
        from safetensors.torch import load_file

        return load_file(str(Path(adapter) / ADAPTER_WEIGHTS))
    return read_adapter_weights(Path(adapter))


def read_factors(run_or_adapter: str | Path) -> tuple[dict, dict]:
    """(lora_factors, {module: (dtype of lora_B, dtype of lora_A) as stored}): the storage dtypes set the rounding
    floor below which a singular value of B @ A is noise (`factor_tolerance`)."""
    adapter = find_adapter(run_or_adapter)
    config = _adapter_config(adapter)
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter_tensors(adapter).items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:  # GDN gates, DoRA magnitudes, modules_to_save, embedding LoRA
            continue
        pieces.setdefault(match["module"].removeprefix(_PREFIX), {})[match["which"]] = tensor
    factors, dtypes = {}, {}
    for module, ab in pieces.items():
        if set(ab) != {"A", "B"}:
            raise ToolkitError(f"module {module} has lora_{next(iter(ab))} but not its partner",
                               where=str(adapter / ADAPTER_WEIGHTS))
        a, b = ab["A"].to(torch.float64), ab["B"].to(torch.float64)
        r = a.shape[0]  # per module (peft's rank_pattern); alpha_pattern is not used by this toolkit
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        factors[module] = (b * scale, a)
        dtypes[module] = (ab["B"].dtype, ab["A"].dtype)
    if not factors:
        raise ToolkitError("the adapter holds no lora_A/lora_B weights", where=str(adapter / ADAPTER_WEIGHTS))
    order = sorted(factors, key=_natural_key)
    return {m: factors[m] for m in order}, {m: dtypes[m] for m in order}


def lora_factors(run_or_adapter: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name (as in the base model) -> (scale·B [out, r], A [r, in]), float64 on CPU: the layer's output
    changes by x @ (B @ A)ᵀ. (Conv1D layers, fan_in_fan_out, store their weight as the transpose.)"""
    return read_factors(run_or_adapter)[0]


def lora_deltas(run_or_adapter: str | Path) -> dict[str, torch.Tensor]:
    """Module name -> ΔW = scale · B @ A (the change to module.weight), float64 on CPU."""
    transposed = bool(_adapter_config(find_adapter(run_or_adapter)).get("fan_in_fan_out"))
    return {name: (b @ a).T if transposed else b @ a for name, (b, a) in lora_factors(run_or_adapter).items()}


def _gates(adapter: Path) -> dict[str, torch.Tensor]:
    """Trained GDN gate tensors saved with the adapter, by their base-model parameter names."""
    return {k.removeprefix(_PREFIX): v for k, v in adapter_tensors(adapter).items()
            if _LORA_KEY.fullmatch(k) is None and k.rsplit(".", 1)[-1] in ("A_log", "dt_bias")}


_FROM_BLOCKS = re.compile(r"(?:^|\.)((?:layers|h)\.\d+\..+)$")


def _match_names(names, available: dict) -> dict[str, str]:
    """{adapter name: name in the model}: the same name, else the one model name with the same path from the
    decoder block list on (model.language_model.layers.3.x and model.layers.3.x are one module). Unmatched
    names are left out."""
    by_tail: dict[str, list[str]] = {}
    for name in available:
        match = _FROM_BLOCKS.search(name)
        if match:
            by_tail.setdefault(match.group(1), []).append(name)
    out = {}
    for name in names:
        if name in available:
            out[name] = name
            continue
        match = _FROM_BLOCKS.search(name)
        candidates = by_tail.get(match.group(1), []) if match else []
        if len(candidates) == 1:
            out[name] = candidates[0]
    return out


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def module_type(name: str) -> str:
    """attention (q/k/v/o_proj), gdn (linear_attn projections), mlp, or other."""
    for kind, rx in _MODULE_TYPES:
        if rx.search(name):
            return kind
    return "other"


# ---------------------------------------------------------------- spectra


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


def truncate_adapter(run_or_adapter: str | Path, k: int) -> dict[str, torch.Tensor]:
    """Module name -> the delta truncated to its top-k SVD directions (float64, CPU, laid out as lora_deltas)."""
    transposed = bool(_adapter_config(find_adapter(run_or_adapter)).get("fan_in_fan_out"))
    truncated = truncate_factors(lora_factors(run_or_adapter), k)
    return {name: (b @ a).T if transposed else b @ a for name, (b, a) in truncated.items()}


# ---------------------------------------------------------------- profiles of a run


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


def adapter_profile(run_or_adapter: str | Path) -> tuple[dict, dict]:
    """(report section, {module: (U, Vh, rank)}) for one adapter; ranks are numerical at the factors' storage
    precision (`factor_tolerance`), not the LoRA r."""
    adapter = find_adapter(run_or_adapter)
    config = _adapter_config(adapter)
    factors, dtypes = read_factors(adapter)
    svds = spectra(factors, dtypes)
    modules, bases = {}, {}
    for name, (b, a) in factors.items():
        u, s, vh, tolerance = svds[name]
        shape = (b.shape[0], a.shape[1])
        profile = profile_from_singular_values(s, shape, tolerance)
        modules[name] = {"type": module_type(name), "shape": list(shape), "r": b.shape[1],
                         "dtype": "/".join(sorted({str(d).removeprefix("torch.") for d in dtypes[name]})), **profile}
        bases[name] = (u, vh, profile["rank"])
    rank, energy = measured_rank(svds)
    section = {"path": str(run_or_adapter), "adapter": str(adapter), "r": config.get("r"),
               "lora_alpha": config.get("lora_alpha"), "use_rslora": bool(config.get("use_rslora")),
               "max_rank": max(m["r"] for m in modules.values()), "measured_rank": rank,
               "energy_in_measured_rank": energy, "summary": _summarize(modules), "modules": modules}
    return section, bases


def _summarize(modules: dict) -> dict:
    """Per module type: count, max/median numerical rank, mean/median effective rank, mean stable rank, mean
    energy at each k."""
    groups: dict[str, list[dict]] = {}
    for m in modules.values():
        groups.setdefault(m["type"], []).append(m)
    summary = {}
    for kind in sorted(groups, key=lambda t: ("attention", "gdn", "mlp", "other").index(t)):
        ms = groups[kind]
        eranks = torch.tensor([m["effective_rank"] for m in ms], dtype=torch.float64)
        ranks = torch.tensor([float(m["rank"]) for m in ms], dtype=torch.float64)
        summary[kind] = {
            "modules": len(ms),
            "rank_max": int(ranks.max()),
            "rank_median": float(ranks.median()),
            "effective_rank_mean": float(eranks.mean()),
            "effective_rank_median": float(eranks.median()),
            "stable_rank_mean": sum(m["stable_rank"] for m in ms) / len(ms),
            "energy_mean": {str(k): sum(m["energy"][str(k)] for m in ms) / len(ms) for k in ENERGY_KS},
        }
    return summary


def _compare(bases_a: dict, bases_b: dict) -> dict:
    common = [n for n in bases_a if n in bases_b]
    if not common:
        raise ToolkitError("the two adapters share no module, so their subspaces cannot be compared",
                           hint="compare two runs of the same recipe at different ranks")
    modules = {}
    for name in common:
        (ua, vha, ra), (ub, vhb, rb) = bases_a[name], bases_b[name]
        if ua.shape[0] != ub.shape[0] or vha.shape[1] != vhb.shape[1]:
            raise ToolkitError(f"module {name} has different shapes in the two adapters", hint="same base model?")
        modules[name] = {"type": module_type(name), **_similarity(ua, vha, ra, ub, vhb, rb)}
    summary = {}
    for kind in ("attention", "gdn", "mlp", "other"):
        rows = [m for m in modules.values() if m["type"] == kind and m["k"]]
        if rows:
            summary[kind] = {"modules": len(rows), "left_mean": sum(m["left"] for m in rows) / len(rows),
                             "right_mean": sum(m["right"] for m in rows) / len(rows),
                             "chance_left_mean": sum(m["chance_left"] for m in rows) / len(rows),
                             "chance_right_mean": sum(m["chance_right"] for m in rows) / len(rows),
                             "k_max": max(m["k"] for m in rows)}
    only = sorted(set(bases_a) ^ set(bases_b))
    return {"modules_compared": len(common), "modules_in_one_only": only, "summary": summary, "modules": modules}


# ---------------------------------------------------------------- truncation sweep


def _load_base(adapter: Path, device: torch.device, trust_remote_code: bool = False, allow_pickle: bool = False):
    """(model, tokenizer, loaded recipe or None) for the adapter's base model. `trust_remote_code` and
    `allow_pickle` are the caller's (the command line): the run directory's recipe does not decide what code runs."""
    from toolkit.model import load_model, load_tokenizer
    from toolkit.recipe import ModelConfig

    run_dir = find_run_dir(adapter)
    trust = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    path = adapter_base(adapter, run_dir)
    loaded = None
    if run_dir is not None:
        from toolkit.recipe import load_recipe

        loaded = load_recipe(run_dir / RUN_RECIPE)
        model_cfg = loaded.recipe.model.model_copy(update={**trust, "name_or_path": path})
    else:
        model_cfg = ModelConfig(name_or_path=path, **trust)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        tokenizer = load_tokenizer(path, model_cfg)
        model = load_model(path, model_cfg, dtype=dtype)
    except ToolkitError as err:
        raise (loaded.place(err) if loaded else err) from None
    return model.to(device).eval(), tokenizer, loaded


def _behavior_examples(loaded, tokenizer, data: Path | None) -> tuple[list, str, int, int]:
    """(examples, description, batch size, records skipped): `data` JSONL, else the run's validation examples.

    A record is skipped when truncation to the recipe's max_length leaves it no token to score."""
    from toolkit.data.formatting import example_from_record
    from toolkit.data.sources import load_sources, read_records
    from toolkit.recipe import SourceConfig

    batch_size = loaded.recipe.train.batch_size if loaded else 8
    if data is not None:
        if not Path(data).is_file():
            raise ToolkitError("data file not found", where=str(data))
        max_length = loaded.recipe.data.max_length if loaded else 512
        src = SourceConfig(name="data", path=str(data))
        records = read_records(src, 0)
        examples = []
        for where, record in records:
            ex = example_from_record(record, tokenizer, fmt="auto", text_field="text", strip_instructions=False,
                                     max_length=max_length, source="data", tier=None, where=where)
            if ex is not None:
                examples.append(ex)
        if not examples:
            raise ToolkitError(f"no usable examples: none keeps a token to score within max_length={max_length}",
                               where=str(data))
        return examples, str(data), batch_size, len(records) - len(examples)
    if loaded is None:
        raise ToolkitError("no run recipe to take behavior data from", hint="pass --data JSONL")
    try:
        sources = load_sources(loaded.recipe.data, tokenizer, loaded.recipe.run.seed)
    except ToolkitError as err:
        raise loaded.place(err) from None
    examples = [ex for s in sources for ex in s.val]
    if not examples:
        raise ToolkitError("the run's recipe holds no validation examples (data.val_fraction: 0?)",
                           where=str(loaded.path), hint="pass --data JSONL")
    names = ", ".join(s.name for s in sources if s.val)
    return examples, f"validation examples of the run's sources ({names})", batch_size, 0


def _loss(model, examples, batch_size: int, pad_id: int) -> float:
    """Mean next-token cross-entropy over target tokens, as the training loop's validation loss."""
    from toolkit.train.validation import examples_loss

    total, count = examples_loss(model, examples, batch_size, "bucket", pad_id)
    return total / count


@contextmanager
def _applied(model, factors: dict | None, gates: dict):
    """The model with ΔW = B @ A added to each module's output (float32 low-rank hooks; a LoRA on a module's
    weight parameter, which is not a Linear/Conv1D, is added to the weight itself) and the gates set."""
    if factors is None:
        yield model
        return
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    module_names, param_names = _match_names(factors, modules), _match_names(gates, params)
    missing = [n for n in factors if n not in module_names] + [n for n in gates if n not in param_names]
    if missing:
        raise ToolkitError(f"the adapter names {len(missing)} modules the base model lacks (e.g. {missing[0]})",
                           hint="is this the adapter's base model?")
    handles, saved = [], {}
    try:
        with torch.no_grad():
            for name, (b, a) in factors.items():
                module = modules[module_names[name]]
                device = module.weight.device
                if isinstance(module, (torch.nn.Linear, Conv1D)):
                    handles.append(module.register_forward_hook(
                        _delta_hook(b.to(device, torch.float32), a.to(device, torch.float32))))
                else:  # peft target_parameters: the weight itself moves by B @ A
                    key = module_names[name] + ".weight"
                    saved.setdefault(key, module.weight.detach().clone())
                    module.weight.add_((b @ a).to(device, module.weight.dtype))
            for name, value in gates.items():
                param = params[param_names[name]]
                saved.setdefault(param_names[name], param.detach().clone())
                param.copy_(value)
        yield model
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def _delta_hook(b: torch.Tensor, a: torch.Tensor):
    def hook(module, args, output):
        x = args[0]
        return output + ((x.to(torch.float32) @ a.T) @ b.T).to(output.dtype)
    return hook


def truncation_sweep(run_or_adapter: str | Path, data: str | Path | None = None, trust_remote_code: bool = False,
                     allow_pickle: bool = False) -> dict:
    """Behavior retained by the top-k directions of each delta, k = 8 … 256 below the LoRA r, the measured rank and
    r itself. `rank` is the LoRA r (the largest over modules); `measured_rank` the largest numerical rank."""
    adapter = find_adapter(run_or_adapter)
    factors, dtypes = read_factors(adapter)
    gates = _gates(adapter)
    rank = max(b.shape[1] for b, _ in factors.values())
    measured, energy = measured_rank(spectra(factors, dtypes))
    ks = sorted({k for k in SWEEP_KS if k < rank} | {k for k in (measured, rank) if k >= 1})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, loaded = _load_base(adapter, device, trust_remote_code, allow_pickle)
    examples, described, batch_size, skipped = _behavior_examples(loaded, tokenizer, Path(data) if data else None)

    def loss_with(f):
        with _applied(model, f, gates):
            return _loss(model, examples, batch_size, tokenizer.pad_token_id)

    loss_base, loss_full = loss_with(None), loss_with(factors)
    gap = loss_base - loss_full
    sweep = []
    for k in ks:
        loss_k = loss_full if k >= rank else loss_with(truncate_factors(factors, k))
        retained = (loss_base - loss_k) / gap if abs(gap) >= MIN_LOSS_GAP else None
        sweep.append({"k": k, "loss": loss_k, "retained": retained})
    return {"run": str(run_or_adapter), "rank": rank, "measured_rank": measured, "energy_in_measured_rank": energy,
            "data": described, "examples": len(examples), "skipped": skipped, "loss_base": loss_base,
            "loss_full": loss_full, "gates_applied": sorted(gates), "sweep": sweep}


def _measured_text(truncation: dict) -> str:
    r, measured = truncation["rank"], truncation.get("measured_rank", truncation["rank"])
    energy = truncation.get("energy_in_measured_rank")
    carries = f" carries {energy:.1%} of the delta's energy" if energy is not None else ""
    return f"Rank {measured} of r = {r}{carries} (numerical rank at the factors' storage precision)."


def verdict(truncation: dict, threshold: float = RETAIN_THRESHOLD) -> dict:
    """The measured rank, the smallest swept k whose top-k truncation retains ≥ threshold of the loss gain (the
    rank that would have sufficed), and whether rank 64 would have (`suffices`)."""
    r, sweep = truncation["rank"], truncation["sweep"]
    gap = truncation["loss_base"] - truncation["loss_full"]
    rule = (f"the smallest swept k whose top-k truncation retains ≥ {threshold:.0%} of the loss gain would have "
            f"sufficed; rank {VERDICT_RANK} suffices when that k ≤ {VERDICT_RANK}")
    head = _measured_text(truncation)
    result = {"rule": rule, "threshold": threshold, "r": r, "measured_rank": truncation.get("measured_rank", r),
              "sufficient_rank": None, "suffices": None}
    if abs(gap) < MIN_LOSS_GAP:
        text = (f"Cannot tell what would have sufficed: the full adapter moves the behavior loss by only {gap:+.2g} "
                f"(base {truncation['loss_base']:.4f}, adapter {truncation['loss_full']:.4f}), too little to measure "
                "retention.")
        return {**result, "text": f"{head} {text}"}
    if gap < 0:
        text = (f"Cannot tell what would have sufficed: the adapter makes the behavior loss worse "
                f"({truncation['loss_base']:.4f} -> {truncation['loss_full']:.4f}), so there is no gain to retain; "
                "check the data.")
        return {**result, "text": f"{head} {text}"}
    retained = {row["k"]: row["retained"] for row in sweep if row["retained"] is not None}
    smallest = min((k for k, v in retained.items() if v >= threshold), default=None)
    below = max((k for k in retained if k < r), default=None)
    if smallest is not None and smallest < r:
        text = (f"r = {smallest} would have sufficed: its top-{smallest} truncation retains "
                f"{retained[smallest]:.0%} of the loss gain on the behavior data (threshold {threshold:.0%}).")
    elif below is not None:
        text = (f"No smaller rank would have sufficed: the top {below} directions retain {retained[below]:.0%} of the "
                f"loss gain on the behavior data (threshold {threshold:.0%}).")
    else:
        text = f"r = {r} is the smallest rank the sweep tried."
    suffices = smallest is not None and smallest <= VERDICT_RANK
    if r > VERDICT_RANK and not suffices and VERDICT_RANK in retained:
        text += (f" Rank {VERDICT_RANK} would not have sufficed: its top-{VERDICT_RANK} truncation retains "
                 f"{retained[VERDICT_RANK]:.0%}.")
    return {**result, "sufficient_rank": smallest, "suffices": suffices, "text": f"{head} {text}"}


# ---------------------------------------------------------------- the report


def rank_report(run_a: str | Path, run_b: str | Path | None = None, data: str | Path | None = None,
                out: str | Path | None = None, trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    """Profiles of one or two adapters, their subspace similarity, the truncation sweep of the higher-rank one and
    the verdict; written to OUT/rank.json and OUT/rank.md (default RUN_A/reports/). Returns the report with
    `paths`. The base model loads with `trust_remote_code` / `allow_pickle` as given, never the run's recipe's."""
    section_a, bases_a = adapter_profile(run_a)
    report = {"threshold": RETAIN_THRESHOLD, "run_a": section_a}
    swept = run_a
    if run_b is not None:
        section_b, bases_b = adapter_profile(run_b)
        report["run_b"] = section_b
        report["similarity"] = _compare(bases_a, bases_b)
        if section_b["max_rank"] > section_a["max_rank"]:
            swept = run_b
    report["truncation"] = truncation_sweep(swept, data, trust_remote_code=trust_remote_code,
                                            allow_pickle=allow_pickle)
    report["verdict"] = verdict(report["truncation"])
    if out is None:
        adapter = find_adapter(run_a)
        out = (find_run_dir(adapter) or Path(run_a)) / "reports"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "rank.json"), "markdown": str(out / "rank.md")}
    (out / "rank.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "rank.md").write_text(render_markdown(report))
    return {**report, "paths": paths}


def render_markdown(report: dict) -> str:
    lines = ["# LoRA effective rank", "", f"**Verdict.** {report['verdict']['text']}",
             f"(Rule: {report['verdict']['rule']}.)", ""]
    for key in ("run_a", "run_b"):
        if key not in report:
            continue
        sec = report[key]
        lines += [f"## {sec['path']} (r={sec['r']}, alpha={sec['lora_alpha']}"
                  f"{', rslora' if sec['use_rslora'] else ''})", "",
                  (f"Measured rank {sec['measured_rank']} (largest over modules; singular values below what rounding "
                   f"the stored factors could produce are not counted), holding {sec['energy_in_measured_rank']:.4%} "
                   "of the delta's energy."), "",
                  ("| modules | n | rank max | rank median | eff. rank mean | eff. rank median | stable rank mean | "
                   + " | ".join(f"energy@{k}" for k in ENERGY_KS) + " |"),
                  "|---|---|---|---|---|---|---|" + "---|" * len(ENERGY_KS)]
        for kind, s in sec["summary"].items():
            lines.append(f"| {kind} | {s['modules']} | {s['rank_max']} | {s['rank_median']:g} | "
                         f"{s['effective_rank_mean']:.2f} | {s['effective_rank_median']:.2f} | "
                         f"{s['stable_rank_mean']:.2f} | "
                         + " | ".join(f"{s['energy_mean'][str(k)]:.3f}" for k in ENERGY_KS) + " |")
        lines.append("")
    if "similarity" in report:
        sim = report["similarity"]
        lines += ["## Subspace similarity (mean cos² of principal angles, top k = the smaller measured rank, ≤ 64)",
                  "", "Chance is what a random k-dim subspace gives (k/n for n rows or columns).", "",
                  "| modules | n | k max | left | right | chance left | chance right |",
                  "|---|---|---|---|---|---|---|"]
        for kind, s in sim["summary"].items():
            lines.append(f"| {kind} | {s['modules']} | {s['k_max']} | {s['left_mean']:.3f} | {s['right_mean']:.3f} | "
                         f"{s['chance_left_mean']:.3f} | {s['chance_right_mean']:.3f} |")
        lines.append("")
    t = report["truncation"]
    lines += [f"## Truncation sweep of {t['run']} (r = {t['rank']}, measured rank {t['measured_rank']})", "",
              f"Behavior data: {t['data']}, {t['examples']} examples"
              + (f" ({t['skipped']} skipped: nothing to score within max_length)" if t["skipped"] else "")
              + f". Loss: base {t['loss_base']:.4f}, "
              f"full adapter {t['loss_full']:.4f}. "
              "retained(k) = (loss_base − loss_k) / (loss_base − loss_full).", "",
              "| k | loss | retained |", "|---|---|---|"]
    for row in t["sweep"]:
        retained = "n/a" if row["retained"] is None else f"{row['retained']:.3f}"
        lines.append(f"| {row['k']} | {row['loss']:.4f} | {retained} |")
    return "\n".join(lines) + "\n"
