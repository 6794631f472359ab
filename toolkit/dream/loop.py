"""The dream loop (seed 003): the model writes scenarios from seed situations at the scenario
temperature, answers each at the response temperature, an evaluator judges, and failures become
training data (STaR / ReST-EM: keep what passes; SPIN-style pairs for preference training later).

    cycle = dream.cycle(model, tokenizer, step, progress, phase_temperature)
    # = dream.apply(job, dream.dream(job, model, tokenizer)) with job = dream.plan(step, progress, ...):
    # plan and apply change the loop's state; dream only generates and judges (dream.async runs it aside)

The constitution is in the prompt when generating and stripped from what is trained on (seed 002).
Seeds whose scenarios always pass or always fail teach little (DAPO's filter): they are drawn with
weight `zpd_floor`, so cycles dwell at the model's decision boundary, the zone of proximal development.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from toolkit.util.jsonl import jsonl_rows
from toolkit.util.rng import rng_state, set_rng_state, stable_seed
from toolkit.util.background import Pending
from toolkit.text.generate import chat_prompt, sample
from toolkit.dream.pool import DreamSource
from toolkit.dream.temperature import TemperaturePolicy
from toolkit.errors import ToolkitError
from toolkit.journal import JsonlWriter

PASS_RATE_BINS = (0.25, 0.5, 0.75, 1.0)  # pass-rate histogram: never, (0, .25], ..., (.75, 1), always


class DreamLoop:
    def __init__(self, cfg, evaluator, source: DreamSource, run_dir: Path, seed: int, write: bool = True,
                 teacher=None):
        self.cfg, self.evaluator, self.source, self.teacher = cfg, evaluator, source, teacher
        self.seed = seed
        self.seeds = load_seeds(cfg.seeds)
        self.constitution = read_constitution(cfg.constitution)
        self.policy = TemperaturePolicy(cfg.scenario_temperature)
        self.rng = random.Random(stable_seed(seed, "dream"))
        self.cycles = 0
        self.seed_outcomes: dict[str, list[int]] = {}  # seed id -> [passed, evaluated], over all cycles
        self.pairs = JsonlWriter(Path(run_dir) / "dream" / "pairs.jsonl", enabled=write)
        self.pending: Pending | None = None  # a cycle running beside training (dream.async), applied at its join

    def due(self, step: int) -> bool:
        return step > 0 and step % self.cfg.every == 0

    # ---------------------------------------------------------------- one cycle

    def cycle(self, model, tokenizer, step: int, progress: float, phase_temperature=None) -> tuple[dict, list[dict]]:
        """Run one cycle; returns (summary, one record per judged response) for the journal."""
        job = self.plan(step, progress, phase_temperature)
        return self.apply(job, self.dream(job, model, tokenizer))

    def plan(self, step: int, progress: float, phase_temperature=None) -> dict:
        """What the cycle due at `step` will do: its temperature and seeds (this moves the loop's RNG). JSON."""
        if self.evaluator is None:  # build_dream gives the judge to the main process only
            raise RuntimeError("dream cycles run on the main process only; the others load its state")
        return {"step": step, "cycle": self.cycles, "failure_rate": self.policy.failure_rate(),
                "temperature": self.policy.temperature(progress, phase_temperature), "seeds": self._pick_seeds()}

    def dream(self, job: dict, model, tokenizer) -> dict:
        """The cycle's generation and judging: reads the job and the config, never the loop's state, so it can
        run in a background thread on a copy of the weights. Every generation is one batched call. JSON."""
        cfg, picked, cycle = self.cfg, job["seeds"], job["cycle"]
        scenarios = self._write_scenarios(model, tokenizer, picked, job["temperature"], cycle)
        n = cfg.samples_per_scenario
        responses = sample(model, tokenizer, [self._prompt(tokenizer, s) for s in scenarios for _ in range(n)],
                           temperatures=[cfg.response_temperature] * len(scenarios) * n,
                           seeds=[stable_seed(self.seed, "responses", cycle, i) for i in range(len(scenarios) * n)],
                           max_new_tokens=cfg.response_max_new_tokens, batch_size=cfg.batch_size)
        asked = [s for s in scenarios for _ in range(n)]
        verdicts = [{"score": float(v.score), "passed": bool(v.passed), "reason": str(v.reason)}
                    for v in self.evaluator.evaluate(asked, responses)]
        failed = [i for i in range(len(scenarios)) if not all(v["passed"] for v in verdicts[i * n:(i + 1) * n])]
        targets = dict(zip(failed, self._targets(model, tokenizer, [picked[i] for i in failed],
                                                 [scenarios[i] for i in failed], cycle)))
        return {"scenarios": scenarios, "responses": responses, "verdicts": verdicts,
                "targets": {str(i): t for i, t in targets.items()}}

    def apply(self, job: dict, result: dict) -> tuple[dict, list[dict]]:
        """The cycle's outcomes into the loop's state and the dream source; (summary, journal records)."""
        n, step = self.cfg.samples_per_scenario, job["step"]
        scenarios, responses, verdicts = result["scenarios"], result["responses"], result["verdicts"]
        self.policy.record([v["passed"] for v in verdicts])
        events, rates = [], []
        for i, (seed_row, scenario) in enumerate(zip(job["seeds"], scenarios)):
            mine = range(i * n, (i + 1) * n)
            passed = [verdicts[j]["passed"] for j in mine]
            rates.append(sum(passed) / len(passed))
            outcome = self.seed_outcomes.setdefault(seed_row["id"], [0, 0])
            outcome[0], outcome[1] = outcome[0] + sum(passed), outcome[1] + len(passed)
            events += [{"temperature": job["temperature"], "failure_rate": job["failure_rate"], "seed": seed_row["id"],
                        "scenario": scenario, "response": responses[j], **verdicts[j]} for j in mine]
            target = result["targets"].get(str(i))
            if target is not None:
                failed = [responses[j] for j in mine if not verdicts[j]["passed"]]
                self._learn(seed_row, scenario, failed, target, rates[-1], step)
        self.cycles += 1
        summary = {"cycle": self.cycles, "temperature": job["temperature"], "failure_rate": job["failure_rate"],
                   "scenarios": len(scenarios), "responses": len(responses),
                   "passed": sum(v["passed"] for v in verdicts), "pass_rate_histogram": histogram(rates),
                   "pool": len(self.source.records), "new_failure_rate": self.policy.failure_rate()}
        return summary, events

    def _pick_seeds(self) -> list[dict]:
        weights = [self._seed_weight(s["id"]) for s in self.seeds]
        return self.rng.choices(self.seeds, weights=weights, k=self.cfg.scenarios_per_cycle)

    def _seed_weight(self, seed_id: str) -> float:
        passed, total = self.seed_outcomes.get(seed_id, (0, 0))
        if total and passed in (0, total):  # always right or always wrong so far: little to learn
            return self.cfg.zpd_floor
        return 1.0

    def _write_scenarios(self, model, tokenizer, picked: list[dict], temperature: float, cycle: int) -> list[str]:
        constitution = f"{self.constitution}\n\n" if self.constitution else ""
        prompts = [chat_prompt(tokenizer, [{"role": "user", "content": self.cfg.scenario_prompt.format(
            constitution=constitution, situation=s["situation"])}]) for s in picked]
        written = sample(model, tokenizer, prompts, temperatures=[temperature] * len(prompts),
                         seeds=[stable_seed(self.seed, "scenarios", cycle, i) for i in range(len(prompts))],
                         max_new_tokens=self.cfg.scenario_max_new_tokens, batch_size=self.cfg.batch_size)
        # a model that writes nothing usable yet (early, or tiny) is asked the situation itself
        return [text.strip() or s["situation"] for text, s in zip(written, picked)]

    def _prompt(self, tokenizer, scenario: str) -> str:
        messages = [{"role": "system", "content": self.constitution}] if self.constitution else []
        return chat_prompt(tokenizer, messages + [{"role": "user", "content": scenario}])

    # ---------------------------------------------------------------- failures become data

    def _targets(self, model, tokenizer, seed_rows: list[dict], scenarios: list[str], cycle: int) -> list[str | None]:
        """What each failed scenario should have been answered (None: nothing passing this time)."""
        if self.cfg.on_failure.strategy != "reference":
            return self._best_of_k(model, tokenizer, scenarios, cycle)
        asked = [s for row, s in zip(seed_rows, scenarios) if not row.get("reference")]
        taught = iter(self._teacher_answers(asked, cycle))
        return [row.get("reference") or next(taught) for row in seed_rows]

    def _learn(self, seed_row: dict, scenario: str, failed: list[str], target: str, rate: float, step: int) -> None:
        strategy = self.cfg.on_failure.strategy
        meta = {"step": step, "seed": seed_row["id"], "tags": seed_row.get("tags", []), "pass_rate": rate,
                "strategy": strategy}
        user = [{"role": "user", "content": scenario}]  # no constitution: it is stripped from training
        if strategy == "pairs":
            for rejected in failed:  # TRL's conversational preference format
                self.pairs.write({"prompt": user, "chosen": [{"role": "assistant", "content": target}],
                                  "rejected": [{"role": "assistant", "content": rejected}], **meta})
            return
        self.source.add({"messages": user + [{"role": "assistant", "content": target}], **meta})

    def _best_of_k(self, model, tokenizer, scenarios: list[str], cycle: int) -> list[str | None]:
        """Rejection sampling, every failed scenario's k answers in one batch: the best that passes, if any."""
        k = self.cfg.on_failure.k
        asked = [s for s in scenarios for _ in range(k)]
        answers = sample(model, tokenizer, [self._prompt(tokenizer, s) for s in asked],
                         temperatures=[self.cfg.on_failure.temperature] * len(asked),
                         seeds=[stable_seed(self.seed, "best_of_k", cycle, scenario, j % k)
                                for j, scenario in enumerate(asked)],
                         max_new_tokens=self.cfg.response_max_new_tokens, batch_size=self.cfg.batch_size)
        verdicts = self.evaluator.evaluate(asked, answers) if asked else []
        best = []
        for i in range(len(scenarios)):
            mine = range(i * k, (i + 1) * k)
            passing = [(verdicts[j].score, -j) for j in mine if verdicts[j].passed and answers[j].strip()]
            best.append(answers[-max(passing)[1]] if passing else None)
        return best

    def _teacher_answers(self, scenarios: list[str], cycle: int) -> list[str | None]:
        if self.teacher is None or not scenarios:
            return [None] * len(scenarios)
        model, tokenizer = self.teacher
        answers = sample(model, tokenizer, [self._prompt(tokenizer, s) for s in scenarios],
                         temperatures=[self.cfg.response_temperature] * len(scenarios),
                         seeds=[stable_seed(self.seed, "teacher", cycle, s) for s in scenarios],
                         max_new_tokens=self.cfg.response_max_new_tokens, batch_size=self.cfg.batch_size)
        return [a.strip() or None for a in answers]

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng), "cycles": self.cycles, "policy": self.policy.state_dict(),
                "seed_outcomes": {k: list(v) for k, v in self.seed_outcomes.items()},
                "pending": self.pending.state_dict() if self.pending else None}

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(self.rng, state["rng"])
        self.cycles = state["cycles"]
        self.policy.load_state_dict(state["policy"])
        self.seed_outcomes = {k: list(v) for k, v in state["seed_outcomes"].items()}
        self.pending = Pending.from_state(state["pending"]) if state.get("pending") else None


def histogram(rates: list[float]) -> dict[str, int]:
    """Scenarios by pass rate: never, (0, .25], (.25, .5], (.5, .75], (.75, 1), always."""
    counts = Counter()
    for rate in rates:
        if rate == 0 or rate == 1:
            counts["never" if rate == 0 else "always"] += 1
        else:
            upper = next(b for b in PASS_RATE_BINS if rate <= b)
            counts[f"<={upper:g}"] += 1
    return dict(sorted(counts.items()))


def load_seeds(path: str) -> list[dict]:
    """Seed situations: JSONL rows {"situation", "tags"?, "tier"?, "reference"?, "id"?}."""
    rows, file = [], Path(path)
    if not file.is_file():
        raise ToolkitError(f"dream seeds file not found: {path}", key="dream.seeds")
    for where, row, problem in jsonl_rows(file):
        if problem:
            raise ToolkitError(problem, where=where)
        if not isinstance(row.get("situation"), str) or not row["situation"].strip():
            raise ToolkitError("a seed needs a non-empty \"situation\" string", where=where)
        rows.append({**row, "id": str(row.get("id", f"{file.name}:{where.rsplit(':', 1)[1]}"))})
    if not rows:
        raise ToolkitError("the dream seeds file holds no seeds", where=path)
    return rows


def read_constitution(value: str | None) -> str:
    """The constitution: inline text, or the contents of a file the value names."""
    if not value:
        return ""
    path = Path(value)
    if len(value) < 4096 and "\n" not in value and path.suffix in (".txt", ".md") :
        if not path.is_file():
            raise ToolkitError(f"constitution file not found: {value}", key="dream.constitution")
        return path.read_text(encoding="utf-8").strip()
    return value.strip()
