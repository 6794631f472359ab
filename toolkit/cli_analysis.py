"""`toolkit analyze` and `toolkit steer`: the analysis commands, each a thin call into analysis/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli_options import AllowPickleOpt, TrustRemoteCodeOpt, need_local_model, need_path, quiet_libraries
from toolkit.errors import ToolkitError

analyze_app = typer.Typer(no_args_is_help=True, help="Analyze finished runs' adapters.")


@analyze_app.command("rank")
def analyze_rank(
    run_a: Annotated[Path, typer.Argument(help="A run directory (or a PEFT adapter directory).")],
    run_b: Annotated[Path | None, typer.Argument(help="A second run of the same recipe at another rank.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Behavior data JSONL for the truncation sweep "
                                                             "(default: the run's validation examples).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report directory (default RUN_A/reports/).")] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_pickle: AllowPickleOpt = False,
):
    """Effective rank of each LoRA delta, two runs' subspace similarity, a truncation sweep: would rank 64 do?"""
    quiet_libraries()
    from analysis.rank import rank_report

    report = rank_report(run_a, run_b, data=data, out=out, trust_remote_code=trust_remote_code,
                         allow_pickle=allow_pickle)
    typer.echo(report["verdict"]["text"])
    typer.echo(f"report: {report['paths']['json']}\nreport: {report['paths']['markdown']}")


@analyze_app.command("head-diff")
def analyze_head_diff(
    base: Annotated[str, typer.Option("--base", help="The base: a model directory or hub id.")],
    tuned: Annotated[Path, typer.Option("--tuned", help="A run directory, a PEFT adapter directory or a model directory.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Probe prompts JSONL ({\"prompt\"} | {\"messages\"} | {\"text\"}).")],
    out: Annotated[Path, typer.Option("--out", help="Report directory.")] = Path("reports/head-diff"),
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=8, help="Probes are cut to this many tokens.")] = 256,
    control: Annotated[Path | None, typer.Option("--control", help="A control run: the same recipe and length on "
                                                                   "neutral data (README: head-diff).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", min=1e-6, max=0.5, help="False discovery rate "
                                                                            "(Benjamini-Hochberg).")] = 0.05,
):
    """Which attention heads and which GDN heads changed beyond a null: a control run's change, or without one
    each head's propagated change."""
    quiet_libraries()
    from analysis.head_diff import run_head_diff

    if not prompts.is_file():
        raise ToolkitError("probe prompts file not found", where=str(prompts))
    if control is not None and not control.exists():
        raise ToolkitError("control run not found", where=str(control))
    need_path(tuned, "--tuned", "run, adapter or model directory")
    need_local_model(base, "--base")
    from toolkit.config.checks import check_probe_rows

    check_probe_rows(prompts)
    result = run_head_diff(base, tuned, prompts, out, base_model=base, max_tokens=max_tokens, control=control,
                           alpha=alpha)
    for answer in result.get("summary", {}).get("answers", [])[:1]:
        typer.echo(answer["answer"])
    typer.echo("\n".join(f"report: {out / name}" for name in ("head_diff.html", "head_diff.md", "head_diff.json")))


steer_app = typer.Typer(no_args_is_help=True, help="Steering vectors and linear probes on contrastive pairs.")

SteerModelOpt = Annotated[str, typer.Option("--model", help="A model directory, hub id, run directory or adapter directory.")]
SteerLayersOpt = Annotated[str, typer.Option("--layers", help="Decoder layers, e.g. 2,3 (layer L = hidden_states[L+1]).")]
SteerPositionOpt = Annotated[str, typer.Option("--position", help="Where to read activations: last (last completion "
                                                                   "token) or mean (over completion tokens).")]
SteerPairsOpt = Annotated[Path, typer.Option("--pairs", help="Pairs JSONL: {\"prompt\", \"positive\", \"negative\"}.")]
SteerBatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")]


@steer_app.command("train")
def steer_train(
    model: SteerModelOpt,
    pairs: SteerPairsOpt,
    layers: SteerLayersOpt,
    out: Annotated[Path, typer.Option("--out", help="Output directory (vectors.safetensors, meta.json).")],
    method: Annotated[str, typer.Option("--method", help="mean_diff, pca or logreg.")] = "mean_diff",
    position: SteerPositionOpt = "last",
    batch_size: SteerBatchOpt = 8,
):
    """Steering vectors from contrastive pairs: one per layer, saved as safetensors."""
    quiet_libraries()
    from analysis.steering import train_command

    meta = train_command(model, pairs, layers, method, position, out, batch_size=batch_size)
    norms = ", ".join(f"L{k}={v:.3g}" for k, v in meta["norms"].items())
    typer.echo(f"{meta['method']} vectors from {meta['pairs']} pairs ({norms})\nvectors: {out / 'vectors.safetensors'}")


@steer_app.command("sweep")
def steer_sweep(
    model: SteerModelOpt,
    vector: Annotated[Path, typer.Option("--vector", help="A directory written by `toolkit steer train`.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="JSONL: {\"prompt\", \"positive\", \"negative\"} rows are "
                                                            "scored; rows with only \"prompt\" are neutral (KL).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (sweep.json, sweep.csv, sweep.png).")],
    layers: Annotated[str | None, typer.Option("--layers", help="Layers to steer (default: every layer in the vector file).")] = None,
    coefficients: Annotated[str, typer.Option("--coefficients", help="Comma-separated multipliers of the vector.")] = "-4,-2,0,2,4",
    neutral: Annotated[Path | None, typer.Option("--neutral", help="More neutral prompts JSONL for the off-target KL.")] = None,
    evaluator_recipe: Annotated[Path | None, typer.Option("--evaluator-recipe", help="A recipe whose dream.evaluator "
                                                                                      "judges greedy generations.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation length for the evaluator.")] = 32,
    batch_size: SteerBatchOpt = 8,
):
    """Add coefficient x vector to the residual stream; margins with bootstrap CIs, monotonicity, off-target KL."""
    quiet_libraries()
    from analysis.steering import describe_layer, sweep_command

    result = sweep_command(model, vector, layers, coefficients, prompts, out, neutral_path=neutral,
                           evaluator_recipe=evaluator_recipe, max_new_tokens=max_new_tokens, batch_size=batch_size)
    for line in filter(None, (describe_layer(layer, info) for layer, info in result["layers"].items())):
        typer.echo(line)
    typer.echo(f"report: {result['paths']['json']}\nreport: {result['paths']['csv']}\nreport: {result['paths']['png']}")


@steer_app.command("probe")
def steer_probe(
    model: SteerModelOpt,
    pairs: SteerPairsOpt,
    layers: SteerLayersOpt,
    out: Annotated[Path, typer.Option("--out", help="Output directory (probes.json).")],
    vector: Annotated[Path | None, typer.Option("--vector", help="Steering vectors to compare probe directions with.")] = None,
    tuned: Annotated[Path | None, typer.Option("--tuned", help="A run or adapter of --model: cosine of the vector with "
                                                               "the fine-tune's mean activation shift.")] = None,
    position: SteerPositionOpt = "last",
    folds: Annotated[int, typer.Option("--folds", min=2, help="Cross-validation folds (both sides of a pair in one).")] = 5,
    permutations: Annotated[int, typer.Option("--permutations", min=0, help="Label permutations for the control "
                                                                            "(0: none).")] = 100,
    batch_size: SteerBatchOpt = 8,
):
    """Per-layer linear probes (logistic regression, difference of means) with a permutation control."""
    if tuned is not None:
        need_path(tuned, "--tuned", "run or adapter directory")
    quiet_libraries()
    from analysis.probes import describe_layer, probe_command

    result = probe_command(model, pairs, layers, out, vector_dir=vector, position=position, n_splits=folds,
                           batch_size=batch_size, tuned=tuned, n_permutations=permutations)
    for layer, info in result["layers"].items():
        typer.echo(describe_layer(layer, info))
    typer.echo(f"report: {out / 'probes.json'}")
