"""The `toolkit` command: parse, load the recipe, call one function per command.

A user mistake (`ToolkitError`) prints one line naming the file and key, and exits with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from toolkit.cli_analysis import analyze_app, steer_app
from toolkit.cli_options import (AllowPickleOpt, RecipeArg, ResumeOpt, SetOpt, StopAtOpt, TrustRemoteCodeOpt,
                                 quiet_libraries)
from toolkit.errors import EXIT_USER_ERROR, ToolkitError, first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Behavioral fine-tuning and interpretability for hybrid and Hugging Face causal LMs.")
_state = {"debug": False}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for user errors.")] = False):
    _state["debug"] = debug


@app.command()
def validate(
    recipe: RecipeArg,
    set_: SetOpt = None,
    show_example: Annotated[bool, typer.Option(
        "--show-example", help="Instead of the resolved recipe, print the first chat record of the first chat "
                               "source as the model's chat template renders it, and the text that carries loss.")] = False,
):
    """Check a recipe and print it resolved (after `extends` and `--set`)."""
    from toolkit.recipe import dump_recipe, load_recipe

    loaded = load_recipe(recipe, set_)  # the recipe alone: the files it names are checked when a run starts
    if show_example:
        quiet_libraries()
        try:
            typer.echo(_example_preview(loaded.recipe))
        except ToolkitError as err:
            raise loaded.place(err) from None
    else:
        typer.echo(dump_recipe(loaded.recipe), nl=False)
    typer.echo(f"# {recipe}: valid", err=True)


def _example_preview(recipe) -> str:
    """`validate --show-example`: one training conversation as rendered, then each supervised span decoded."""
    from toolkit.chat import render, supervised_example, supervised_spans, template_description
    from toolkit.data.formatting import record_conversation
    from toolkit.data.sources import read_records
    from toolkit.model import TINY_HYBRID, load_tokenizer, resolve_model_path

    picked = None
    for i, src in enumerate(recipe.data.sources):
        if src.format == "text":
            continue
        for where, record in read_records(src.model_copy(update={"max_examples": 1}), i):
            messages = record_conversation(record, fmt=src.format, text_field=src.text_field,
                                           strip_instructions=src.strip_instructions, where=where)
            if messages is not None:
                picked = src, where, messages
        if picked:
            break
    if picked is None:
        raise ToolkitError("no data source starts with a chat or prompt_response record, so there is no "
                           "conversation to show", key="data.sources")
    src, where, messages = picked
    base_dir = recipe.output_dir / "base-model"
    if recipe.model.name_or_path == TINY_HYBRID and not (base_dir / "config.json").is_file():
        return (f"# tiny-hybrid's tokenizer is trained on the data when the first run starts; {base_dir} does not "
                "exist yet, so there is no example to show")
    path = resolve_model_path(recipe.model, base_dir, lambda: iter(()), recipe.run.seed)
    tokenizer = load_tokenizer(path, recipe.model)
    text = render(tokenizer, messages, add_generation_prompt=False, where=where)
    input_ids, labels = supervised_example(tokenizer, messages, train_on=src.train_on, where=where)
    lines = [f"# {where} (source '{src.name}', train_on: {src.train_on})",
             f"# template: {template_description(tokenizer)}",
             f"# rendered ({len(input_ids)} tokens):", text,
             "# supervised spans (the text that carries loss), one per line:"]
    lines += [repr(tokenizer.decode(span, skip_special_tokens=False)) for span in supervised_spans(input_ids, labels)]
    if len(input_ids) > recipe.data.max_length:
        lines.append(f"# note: data.max_length={recipe.data.max_length} keeps only the first "
                     f"{recipe.data.max_length} of these {len(input_ids)} tokens")
    return "\n".join(lines)


@app.command()
def finetune(recipe: RecipeArg, set_: SetOpt = None, resume: ResumeOpt = False, stop_at: StopAtOpt = None):
    """Fine-tune a model (LoRA unless lora.enabled is false) through the curriculum."""
    _train(recipe, set_, resume, "finetune", stop_at)


@app.command()
def pretrain(recipe: RecipeArg, set_: SetOpt = None, resume: ResumeOpt = False, stop_at: StopAtOpt = None):
    """Train every weight of a model, from scratch or from a checkpoint, through the same loop."""
    _train(recipe, set_, resume, "pretrain", stop_at)


@app.command()
def demo(recipes_dir: Annotated[Path, typer.Option(help="Where demo-pretrain.yaml and demo.yaml are.")] = Path("recipes")):
    """Pretrain tiny-hybrid briefly (reused when done before), then LoRA-finetune it on the directive data."""
    import shutil
    import signal
    import subprocess
    import time

    from toolkit.recipe import load_recipe
    from toolkit.train.checkpoint import latest_checkpoint

    start = time.perf_counter()
    stages = [("pretrain", recipes_dir / "demo-pretrain.yaml"), ("finetune", recipes_dir / "demo.yaml")]
    for command, recipe in stages:
        out = load_recipe(recipe).recipe.output_dir
        if command == "pretrain" and (out / "model" / "config.json").is_file():
            typer.echo(f"== reusing the stage-1 model in {out / 'model'}")
            continue
        if command == "finetune":
            shutil.rmtree(out, ignore_errors=True)  # the demo's own directory: every demo run starts fresh
        resume = ["--resume"] if command == "pretrain" and latest_checkpoint(out) else []
        typer.echo(f"== toolkit {command} {recipe} {' '.join(resume)}")
        child = subprocess.Popen([sys.executable, "-m", "toolkit", command, str(recipe), *resume])
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child, which checkpoints
        code = child.wait()
        signal.signal(signal.SIGINT, previous)
        if code:
            raise SystemExit(code)
    typer.echo(f"demo finished in {time.perf_counter() - start:.0f} s")


@app.command()
def keys():
    """List every key a recipe accepts."""
    from toolkit.recipe import all_recipe_keys

    typer.echo("\n".join(all_recipe_keys()))


@app.command()
def estimate(
    recipe: RecipeArg,
    set_: SetOpt = None,
    gpu_memory: Annotated[float, typer.Option("--gpu-memory", min=1, help="GiB per GPU.")] = 80.0,
    seq: Annotated[int | None, typer.Option("--seq", min=1, help="Sequence length (default data.max_length).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", min=1, help="Micro-batch (default train.batch_size).")] = None,
    command: Annotated[str, typer.Option("--command", help="finetune (LoRA unless lora.enabled is false) or "
                                                           "pretrain (every weight).")] = "finetune",
    gdn_kernel: Annotated[str, typer.Option("--gdn-kernel", help="fla (GPU kernels) or torch (the CPU fallback): "
                                                                 "their GDN activations differ.")] = "fla",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of tables.")] = False,
):
    """Parameters and memory per GPU (weights, gradients, optimizer, activations) under 1 process, FSDP2 and
    ZeRO-3, and how many GPUs the run needs: from the recipe and the model's config, no weights loaded."""
    from toolkit.estimate import estimate as run_estimate
    from toolkit.estimate import estimate_json, render
    from toolkit.recipe import load_recipe

    for value, option, allowed in ((command, "--command", ("finetune", "pretrain")),
                                   (gdn_kernel, "--gdn-kernel", ("fla", "torch"))):
        if value not in allowed:
            raise ToolkitError(f"'{value}' is not one of {', '.join(allowed)}", where=option)
    loaded = load_recipe(recipe, set_)
    quiet_libraries()
    result = run_estimate(loaded, command, gpu_memory_gib=gpu_memory, seq=seq, batch=batch, gdn_kernel=gdn_kernel)
    if as_json:
        typer.echo(estimate_json(result))
    else:
        render(result)


@app.command()
def dream(
    recipe: RecipeArg,
    cycles: Annotated[int, typer.Option("--cycles", min=1, help="How many dream cycles to run.")] = 1,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="A PEFT adapter to dream with (e.g. RUN/adapter).")] = None,
    set_: SetOpt = None,
):
    """Dream without training: the model writes scenarios, answers, is judged; failures become examples."""
    from toolkit.dream.command import run_standalone
    from toolkit.recipe import check_files, load_recipe

    loaded = load_recipe(recipe, set_)
    check_files(loaded)
    if loaded.recipe.dream.evaluator is None or not loaded.recipe.dream.seeds:
        raise ToolkitError("the recipe's dream section needs `seeds` and an `evaluator`", where=loaded.where("dream"))
    quiet_libraries()
    try:
        summary = run_standalone(loaded, cycles, adapter)
    except ToolkitError as err:
        raise loaded.place(err) from None
    typer.echo("\n".join(f"{k:<20} {v}" for k, v in summary.items()))


@app.command("eval")
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory: its final weights (or newest checkpoint) vs its base.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Held-out JSONL of {\"prompt\", \"positive\", "
                                                                   "\"negative\"} (default: the recipe's eval.prompts).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Greedy reply length.")] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=0, help="Replies shown side by side in eval.md.")] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_pickle: AllowPickleOpt = False,
):
    """Base vs tuned on held-out prompts: log-prob margins with confidence intervals, evaluator pass rates."""
    quiet_libraries()
    from toolkit.evaluate import evaluate_run, summary_lines

    settings = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("samples", samples)) if v is not None}
    trusted = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    report = evaluate_run(run_dir, prompts, trusted=trusted, **settings)
    typer.echo("\n".join(summary_lines(report)))
    typer.echo(f"report: {report['paths']['markdown']}\nreport: {report['paths']['json']}")


@app.command("journal")
def journal_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds journal.jsonl).")],
    kind: Annotated[list[str] | None, typer.Option("--kind", help="Only events of this kind (repeatable).")] = None,
    severity: Annotated[str | None, typer.Option("--severity", help="Only events at or above: info, warn, high, "
                                                                    "critical.")] = None,
    tail: Annotated[int | None, typer.Option("--tail", min=1, help="Only the last N matching events.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The matching events as JSON lines.")] = False,
):
    """Show a run's journal, filtered by kind and severity."""
    import json

    from toolkit.journal import SEVERITIES, filter_events, render_event
    from toolkit.util.jsonl import read_jsonl

    path = run_dir / "journal.jsonl"
    if not path.is_file():
        raise ToolkitError("no journal.jsonl: is this a run directory?", where=str(run_dir))
    if severity is not None and severity not in SEVERITIES:
        raise ToolkitError(f"unknown severity '{severity}'", where="--severity", hint=f"one of {', '.join(SEVERITIES)}")
    events = filter_events(read_jsonl(path), kind, severity)[-tail if tail else None:]
    typer.echo("\n".join(json.dumps(e) if as_json else render_event(e) for e in events))


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds journal.jsonl), training or done.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but 127.0.0.1/localhost needs "
                                                     "a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8765,
    token: Annotated[str | None, typer.Option("--token", envvar="TOOLKIT_SERVE_TOKEN",
                                              help="Require Authorization: Bearer TOKEN (or ?token=) on every "
                                                   "request (env TOOLKIT_SERVE_TOKEN).")] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    allow_pickle: AllowPickleOpt = False,
):
    """Talk to the newest checkpoint while the run trains, and watch loss, draws, dreams and alerts live."""
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise ToolkitError(f"binding {host} exposes the model to the network: a token is required", where="--host",
                           hint="pass --token TOKEN or set TOOLKIT_SERVE_TOKEN, or bind 127.0.0.1")
    from toolkit.serve.app import create_app

    fastapi_app = create_app(run_dir, token=token, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    quiet_libraries()
    import uvicorn

    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/" + ("?token=TOKEN" if token else "")
    typer.echo(f"serving {run_dir} at {url}  (Ctrl-C stops)")
    uvicorn.run(fastapi_app, host=host, port=port, log_level="warning")


app.add_typer(analyze_app, name="analyze")
app.add_typer(steer_app, name="steer")


curriculum_app = typer.Typer(no_args_is_help=True, help="Read a recipe's curriculum: explain a step, plot the timeline.")
app.add_typer(curriculum_app, name="curriculum")


@curriculum_app.command("explain")
def curriculum_explain(
    recipe: RecipeArg,
    step: Annotated[int, typer.Option("--step", help="The step to explain (0-based).")],
    source: Annotated[str | None, typer.Option("--source", help="Can this source be drawn at the step, and why?")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")] = False,
    set_: SetOpt = None,
):
    """The phase, eligible sources and tiers, learning rate and temperature at a step, from the recipe alone."""
    from toolkit.curriculum.explain import explain, explain_json, render_explain
    from toolkit.recipe import load_recipe

    loaded = load_recipe(recipe, set_)
    try:
        info = explain(loaded, step, source)
    except ToolkitError as err:
        raise loaded.place(err) from None
    typer.echo(explain_json(info) if as_json else render_explain(info))


@curriculum_app.command("plot")
def curriculum_plot(
    recipe: RecipeArg,
    run: Annotated[Path | None, typer.Option("--run", help="A run directory: overlay its actual draws.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="PNG path (default RUN/reports/curriculum.png, "
                                                           "else curriculum-<recipe>.png).")] = None,
    set_: SetOpt = None,
):
    """Write a timeline PNG: phases, eligible sources, learning rate and temperature over steps."""
    from toolkit.curriculum.explain import plot
    from toolkit.recipe import load_recipe

    loaded = load_recipe(recipe, set_)
    if out is None:
        out = run / "reports" / "curriculum.png" if run else Path(f"curriculum-{recipe.stem}.png")
    typer.echo(plot(loaded, out, run))


def _train(recipe: Path, overrides: list[str] | None, resume: bool, command: str, stop_at: int | None = None) -> None:
    from toolkit.config.checks import check_output_dir
    from toolkit.launch import requested_cpu_processes, run_cpu_processes
    from toolkit.recipe import check_files, load_recipe

    loaded = load_recipe(recipe, overrides)
    check_files(loaded)  # every path the recipe names, before a model loads or a step runs
    try:
        check_output_dir(loaded.recipe.output_dir, create=True)
    except ToolkitError as err:
        raise loaded.place(err) from None
    if (processes := requested_cpu_processes()) > 1:
        raise SystemExit(run_cpu_processes(processes))
    quiet_libraries()
    from toolkit import after_training
    from toolkit.train.loop import train

    try:
        after_training.check_inputs(loaded.recipe, command)
        code = train(loaded, command, resume=resume, stop_at=stop_at, after_training=after_training.STEPS)
    except ToolkitError as err:
        raise loaded.place(err) from None
    raise SystemExit(code)


EXIT_INTERRUPTED = 130  # 128 + SIGINT


def main(argv: list[str] | None = None) -> None:
    """Every way the command line can go wrong ends here: one line on stderr and exit code 2 (130 for Ctrl-C)."""
    try:
        code = app(args=argv, prog_name="toolkit", standalone_mode=False)
    except ToolkitError as err:
        if _state["debug"]:
            raise
        _fail(err.one_line())
    except typer._click.exceptions.NoArgsIsHelpError as err:  # bare `toolkit` / `toolkit analyze`: the help
        err.show()
        raise SystemExit(EXIT_USER_ERROR) from None
    except (typer.TyperException, click.ClickException) as err:  # typer bundles its own click: catch both
        if _state["debug"]:
            raise
        _fail(_usage_line(err))
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    except OSError as err:  # the machine said no to a path the user named (permissions, a file for a directory)
        if _state["debug"] or not err.filename:
            raise
        _fail(f"{err.filename}: {err.strerror or first_line(err)} (--debug shows the traceback)")
    else:
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command into Exit(130) and returns it
            _fail("interrupted (Ctrl-C) before training started; nothing was checkpointed", EXIT_INTERRUPTED)
        if isinstance(code, int) and code:
            raise SystemExit(code)


def _fail(line: str, code: int = EXIT_USER_ERROR) -> None:
    print(f"error: {' '.join(line.split())}", file=sys.stderr)
    raise SystemExit(code) from None


def _usage_line(err) -> str:
    """A usage error as `toolkit finetune: No such option: --resum (did you mean --resume?)`, one line."""
    ctx = getattr(err, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    return f"{where}{err.format_message()} (try '{ctx.command_path if ctx else 'toolkit'} --help')"


if __name__ == "__main__":
    main()
