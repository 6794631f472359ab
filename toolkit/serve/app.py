"""The exploration server's FastAPI app: a JSON API over a run directory, a chat endpoint on the newest
checkpoint, and one self-contained page (page.html, no outside resources).

Reload: every chat request asks `latest_checkpoint(run_dir)` for the newest complete `checkpoints/step-N/`;
when N differs from the loaded step, the weights are loaded again (adapter on its base, or the full model)
before answering. One lock guards loading and generation, so concurrent requests never see half a model.

Security: the CLI binds 127.0.0.1 unless told otherwise, and any other host needs a token. With a token,
every route (the page included) needs `Authorization: Bearer TOKEN` or `?token=TOKEN`; else 401.
Limits (the run's `serve` recipe section, `ServeConfig`): a larger body gets 413 before it is read; invalid
or non-finite values, too many new tokens or a longer prompt get 422; a reply is cut at the time limit, so
no request holds the model lock longer. Loading trusts the command line only: `trust_remote_code` and
`allow_pickle` in the run directory's resolved recipe are ignored (anyone who can write there would choose).
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from toolkit.config.serve import ServeConfig
from toolkit.errors import ToolkitError
from toolkit.journal import SEVERITIES
from toolkit.train.checkpoint import STEP_DIR, latest_checkpoint
from toolkit.util.jsonl import read_jsonl
from toolkit.weights import adapter_base, inference_placement, recipe_model

PAGE = Path(__file__).with_name("page.html")


def checkpoint_step(path: Path | None) -> int | None:
    if path is None:
        return None
    match = STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


class NoCheckpoint(Exception):
    pass


class PromptTooLong(Exception):
    pass


class ModelHolder:
    """The newest checkpoint's model and tokenizer, loaded on first use and reloaded when a newer one appears.
    `trust_remote_code` and `allow_pickle` come from the caller (the command line), never from the run directory."""

    def __init__(self, run_dir: Path, limits: ServeConfig | None = None, trust_remote_code: bool = False,
                 allow_pickle: bool = False):
        self.run_dir = Path(run_dir)
        self.limits = limits or ServeConfig()
        self.trusted = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
        self.lock = threading.Lock()
        self.model = None
        self.tokenizer = None
        self.step: int | None = None
        self.calls = 0

    def newest(self) -> tuple[int | None, Path | None]:
        path = latest_checkpoint(self.run_dir)
        return checkpoint_step(path), path

    def _ensure(self) -> None:
        """Called under the lock: (re)load when the newest checkpoint is not the loaded one."""
        for attempt in range(3):  # keep_last may delete a checkpoint while we read it: try the newer one
            step, path = self.newest()
            if path is None:
                if self.model is not None:  # checkpoints vanished; keep answering with what we have
                    return
                raise NoCheckpoint("no checkpoint yet: the run writes its first one at train.checkpoint_every; "
                                   "try again then")
            if step == self.step and self.model is not None:
                return
            try:
                self._load(path)
            except (OSError, ValueError, ToolkitError):
                if attempt == 2:
                    raise
                continue
            self.step = step
            return

    def _load(self, ckpt_dir: Path) -> None:
        import torch

        from toolkit.model import load_model, load_tokenizer

        model_cfg = self._model_config()
        self.model, self.tokenizer = None, None  # drop the old weights before loading the new: never two at once
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        device, dtype = inference_placement()
        adapter, full = ckpt_dir / "adapter", ckpt_dir / "model"
        if (adapter / "adapter_config.json").is_file():
            from toolkit.lora import load_adapter

            tokenizer = load_tokenizer(str(adapter), model_cfg)
            base = load_model(adapter_base(adapter, self.run_dir), model_cfg, dtype=dtype)
            model = load_adapter(base, adapter, allow_pickle=self.trusted["allow_pickle"])
        elif (full / "config.json").is_file():
            tokenizer = load_tokenizer(str(full), model_cfg)
            model = load_model(str(full), model_cfg, dtype=dtype)
        else:
            raise ToolkitError("checkpoint holds neither adapter/ nor model/", where=str(ckpt_dir))
        model.to(device)
        model.eval()
        self.model, self.tokenizer = model, tokenizer

    def _model_config(self):
        """The run's model section with this server's trust flags: the run directory does not decide what code runs."""
        from toolkit.config.model import ModelConfig

        return (recipe_model(self.run_dir) or ModelConfig()).model_copy(update=self.trusted)

    def chat(self, messages: list[dict], temperature: float, max_new_tokens: int,
             top_p: float = 1.0) -> tuple[str, int, str]:
        """(reply, checkpoint step, why the reply stopped); PromptTooLong past limits.max_prompt_tokens."""
        from toolkit.chat import chat_prompt, encode_prompt
        from toolkit.serve.reply import reply

        with self.lock:
            self._ensure()
            self.calls += 1
            prompt_ids = encode_prompt(self.tokenizer, chat_prompt(self.tokenizer, messages))
            if len(prompt_ids) > self.limits.max_prompt_tokens:
                raise PromptTooLong(f"the prompt is {len(prompt_ids)} tokens; this server takes at most "
                                    f"{self.limits.max_prompt_tokens} (serve.max_prompt_tokens)")
            text, stopped = reply(self.model, self.tokenizer, prompt_ids, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, seconds=self.limits.generation_timeout_s,
                                  seed=self.calls)
            return text, self.step, stopped


class Message(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class ChatRequest(BaseModel):
    messages: list[Message] | None = None
    prompt: str | None = None
    temperature: float = Field(0.7, ge=0.0, le=5.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    max_new_tokens: int = Field(128, ge=1)  # at most the server's serve.max_new_tokens


def serve_limits(run_dir: Path) -> ServeConfig:
    """The run's `serve` section (its resolved recipe), else the defaults."""
    import yaml

    recipe_path = run_dir / "resolved_recipe.yaml"
    section = (yaml.safe_load(recipe_path.read_text()) or {}).get("serve") if recipe_path.is_file() else None
    try:
        return ServeConfig.model_validate(section or {})
    except ValueError as exc:
        raise ToolkitError(f"invalid serve section: {exc.errors()[0]['msg']}", where=str(recipe_path)) from None


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, by its Content-Length before anything is read,
    or as soon as a streamed body passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # raised inside the route's body read, FastAPI answers it as a 413
                raise HTTPException(413, self.message())
            return message

        return await self.app(scope, counted, send)

    def message(self) -> str:
        return f"request body over {self.max_bytes} bytes (serve.max_body_bytes)"

    def too_large(self) -> JSONResponse:
        return JSONResponse({"detail": self.message()}, status_code=413)


def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line and without echoing the input (a NaN in it made the default response a 500)."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid"))
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)


def create_app(run_dir: Path, token: str | None = None, poll_seconds: float = 2.0, limits: ServeConfig | None = None,
               trust_remote_code: bool = False, allow_pickle: bool = False) -> FastAPI:
    """The app over `run_dir`. `limits` default to the run's serve section; `trust_remote_code` and
    `allow_pickle` are the command line's (the run directory's recipe is not asked)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ToolkitError("run directory not found", where=str(run_dir))
    if not (run_dir / "journal.jsonl").is_file():
        raise ToolkitError("no journal.jsonl: is this a run directory?", where=str(run_dir))
    metrics_path, journal_path = run_dir / "metrics.jsonl", run_dir / "journal.jsonl"
    limits = limits or serve_limits(run_dir)
    holder = ModelHolder(run_dir, limits, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)

    def authorize(request: Request) -> None:
        if not token:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer TOKEN (or ?token=TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="toolkit serve", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorize)])
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.state.holder = holder

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text().replace("__POLL_MS__", str(int(poll_seconds * 1000)))

    @app.get("/api/status")
    def status():
        steps = [r["step"] for r in read_jsonl(metrics_path, "tolerant") if "loss" in r]
        newest, _ = holder.newest()
        return {"run_dir": str(run_dir), "step": max(steps) if steps else 0,
                "checkpoint_step": holder.step if holder.model is not None else newest,
                "newest_checkpoint_step": newest, "model_loaded": holder.model is not None}

    @app.get("/api/metrics")
    def metrics(since: int = -1):
        rows, val = [], []
        for r in read_jsonl(metrics_path, "tolerant"):
            if r.get("step", -1) <= since:
                continue
            if "loss" in r:
                rows.append({k: r.get(k) for k in ("step", "loss", "lr", "source", "phase")})
            elif "val_loss" in r:
                val.append({"step": r["step"], "val_loss": r["val_loss"]})
        return {"rows": rows, "val": val}

    @app.get("/api/draws")
    def draws():
        counts = Counter(r["source"] for r in read_jsonl(metrics_path, "tolerant") if "source" in r)
        return {"draws": dict(sorted(counts.items())), "total": sum(counts.values())}

    @app.get("/api/dream")
    def dream():
        cycles = []
        for e in read_jsonl(journal_path, "tolerant"):
            if e.get("kind") == "dream_cycle":
                d = e.get("data", {})
                cycles.append({"step": e["step"], "temperature": d.get("temperature"),
                               "failure_rate": d.get("failure_rate"), "passed": d.get("passed"),
                               "responses": d.get("responses")})
        return {"cycles": cycles}

    @app.get("/api/alerts")
    def alerts(severity: str = "warn"):
        if severity not in SEVERITIES:
            raise HTTPException(400, f"unknown severity '{severity}': one of {', '.join(SEVERITIES)}")
        floor = SEVERITIES.index(severity)
        events = [e for e in read_jsonl(journal_path, "tolerant")
                  if e.get("severity") in SEVERITIES and SEVERITIES.index(e["severity"]) >= floor]
        return {"events": events}

    @app.post("/api/chat")
    def chat(body: ChatRequest):  # a plain def: FastAPI runs it in a worker thread, the lock serializes it
        if body.messages:
            messages = [m.model_dump() for m in body.messages]
        elif body.prompt and body.prompt.strip():
            messages = [{"role": "user", "content": body.prompt}]
        else:
            raise HTTPException(422, "send {\"messages\": [...]} or {\"prompt\": \"...\"}")
        if body.max_new_tokens > limits.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens: at most {limits.max_new_tokens} (serve.max_new_tokens)")
        try:
            reply, step, stopped = holder.chat(messages, body.temperature, body.max_new_tokens, body.top_p)
        except NoCheckpoint as exc:
            raise HTTPException(409, str(exc)) from None
        except PromptTooLong as exc:
            raise HTTPException(422, str(exc)) from None
        except ToolkitError as exc:
            raise HTTPException(500, exc.one_line()) from None
        # stopped: end_of_turn, max_new_tokens, or time_limit (cut at serve.generation_timeout_s)
        return {"reply": reply, "checkpoint_step": step, "stopped": stopped}

    return app
