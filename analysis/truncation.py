"""The truncation sweep of `toolkit analyze rank`: an adapter's deltas cut to their top k singular directions,
applied to the base model as float32 low-rank forward hooks (exactly a rank-k LoRA), and the loss on the
behavior data compared with the base and the full adapter: retained(k) = (loss_base − loss_k) / (loss_base − loss_full)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from analysis.adapters import _gates, _match_names, find_adapter, read_factors
from analysis.spectra import measured_rank, spectra, truncate_factors
from toolkit.errors import ToolkitError
from toolkit.weights import RUN_RECIPE, adapter_base, find_run_dir

SWEEP_KS = (8, 16, 32, 64, 128, 256)
MIN_LOSS_GAP = 1e-4  # below this the adapter does not move the loss enough to measure retention


def _load_base(adapter: Path, device: torch.device, trust_remote_code: bool = False, allow_pickle: bool = False):
    """(model, tokenizer, loaded recipe or None) for the adapter's base model. `trust_remote_code` and
    `allow_pickle` are the caller's (the command line): the run directory's recipe does not decide what code runs."""
    from toolkit.config.model import ModelConfig
    from toolkit.model import load_model, load_tokenizer

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
    from toolkit.config.data import SourceConfig
    from toolkit.data.formatting import example_from_record
    from toolkit.data.sources import load_sources, read_records

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
