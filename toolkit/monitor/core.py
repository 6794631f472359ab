"""The understanding module (seed 001): it watches training and can pause it.

    findings = monitor.after_step(step, loss, grad_norm)            # loss and gradient-norm spikes
    findings += monitor.audit(model, tokenizer, step)                # every audit_every steps: probe samples
    monitor.pause_reason(findings)                                   # pause_on: the loop checkpoints and stops

Every finding is a journal event (kind = the detector, severity = the finding's). Repetition found in
an audit lowers the curriculum reward of the sources drawn since the previous audit (seed 000: the
bandit "fed the model more of what made it degenerate"). State (spike histories, draws since the last
audit) is in every checkpoint.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from toolkit.util.rng import stable_seed
from toolkit.journal import SEVERITIES
from toolkit.util.background import Pending, join_step
from toolkit.monitor.detectors import (BiasDetector, Finding, FormattingDetector, RepetitionDetector,
                                       SpikeDetector, worst)

EXIT_PAUSED = 4  # distinct from 2 (user error), 3 (divergence guard), 128+N (signals)


class Monitor:
    def __init__(self, cfg, seed: int):
        self.cfg, self.seed = cfg, seed
        rep, fmt = cfg.repetition, cfg.formatting
        self.text_detectors = [
            RepetitionDetector(n=rep.n, warn=rep.warn, high=rep.high, critical=rep.critical,
                               run_critical=rep.run_critical),
            FormattingDetector(warn=fmt.warn, high=fmt.high),
            BiasDetector(patterns_path=cfg.bias.patterns, severity=cfg.bias.severity),
        ]
        spikes = cfg.spikes
        self.spikes = {name: SpikeDetector(name, window=spikes.window, warn_z=spikes.warn_z, high_z=spikes.high_z,
                                           min_history=min(10, spikes.window))
                       for name in ("loss_spike", "grad_norm_spike")}
        self.drawn: Counter = Counter()  # sources drawn since the last audit
        self.pending: Pending | None = None  # an audit running beside training (monitor.async), applied at its join

    def after_step(self, step: int, loss: float, grad_norm: float, source: str) -> list:
        self.drawn[source] += 1
        return (self.spikes["loss_spike"].check([(step, loss)])
                + self.spikes["grad_norm_spike"].check([(step, grad_norm)]))

    def due(self, step: int) -> bool:
        return bool(self.cfg.audit_every) and step > 0 and step % self.cfg.audit_every == 0

    def audit(self, model, tokenizer, step: int) -> tuple[list[dict], list]:
        """Probe samples, greedy and sampled, in one batched call, and the findings on them: (samples, findings).
        Reads the config only, so it can run in a background thread on a copy of the weights."""
        from toolkit.text.generate import chat_prompt, sample

        prompts = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in self.cfg.probes]
        modes = [("greedy", 0.0), ("sampled", self.cfg.sample_temperature)]
        rows = [(mode, temperature, i) for mode, temperature in modes for i in range(len(prompts))]
        texts = sample(model, tokenizer, [prompts[i] for _, _, i in rows], temperatures=[t for _, t, _ in rows],
                       seeds=[stable_seed(self.seed, "audit", step, i) for _, _, i in rows],
                       max_new_tokens=self.cfg.max_new_tokens, batch_size=len(rows))
        samples = [{"probe": self.cfg.probes[i], "mode": mode, "text": text} for (mode, _, i), text in zip(rows, texts)]
        findings = [_with(finding, probe=sample["probe"], mode=sample["mode"])
                    for sample in samples for detector in self.text_detectors
                    for finding in detector.check([sample["text"]]) if finding.severity != "info"]
        return samples, findings

    def background_audit(self, job: dict, model, tokenizer) -> dict:
        """`audit` as background work: a JSON result (see toolkit/util/background.py)."""
        samples, findings = self.audit(model, tokenizer, job["step"])
        return {"samples": samples, "findings": [asdict(f) for f in findings]}

    @staticmethod
    def audit_from_result(result: dict) -> tuple[list[dict], list]:
        return result["samples"], [Finding(**f) for f in result["findings"]]

    def audit_in_background(self, model, tokenizer, step: int, max_steps: int, background) -> tuple | None:
        """monitor.async, on the main process after `step`: the audit whose join step has come, as (samples,
        findings, weights_step, background seconds), or None; then the audit due now starts in the background
        on a frozen copy of the weights."""
        joined, pending = None, self.pending
        if pending is not None and pending.join <= step and pending.step < step:
            samples, findings = self.audit_from_result(pending.result())
            joined, self.pending = (samples, findings, pending.step, pending.seconds), None
        if self.due(step):
            frozen, own_tokenizer = background.snapshot(model, tokenizer, step)
            job = {"step": step}
            self.pending = Pending(job, join_step(step, self.cfg.audit_every, max_steps),
                                   background.submit(self.background_audit, job, frozen, own_tokenizer))
        return joined

    def penalize(self, curriculum, findings: list) -> dict[str, float]:
        """Spread the audit's worst repetition over the sources drawn since the last audit."""
        repetition = [f for f in findings if f.detector == "repetition"]
        drawn, self.drawn = self.drawn, Counter()
        if not (self.cfg.penalize and repetition and drawn):
            return {}
        value = max(min(f.data.get("seq_rep", 1.0), 1.0) for f in repetition)  # a share in [0, 1], like the data's
        total = sum(drawn.values())
        shares = {name: value * count / total for name, count in drawn.items()}
        for name, share in shares.items():
            curriculum.note_repetition(name, share)
        return shares

    def pause_reason(self, findings: list) -> str | None:
        if self.cfg.pause_on is None or not findings:
            return None
        top = worst(findings)
        if SEVERITIES.index(top.severity) >= SEVERITIES.index(self.cfg.pause_on):
            return f"{top.detector} {top.severity}: {top.message} (monitor.pause_on: {self.cfg.pause_on})"
        return None

    def state_dict(self) -> dict:
        return {"spikes": {n: d.state_dict() for n, d in self.spikes.items()}, "drawn": dict(self.drawn),
                "pending": self.pending.state_dict() if self.pending else None}

    def load_state_dict(self, state: dict) -> None:
        for name, detector in self.spikes.items():
            detector.load_state_dict(state["spikes"][name])
        self.drawn = Counter(state["drawn"])
        self.pending = Pending.from_state(state["pending"]) if state.get("pending") else None


def _with(finding, **data):
    from dataclasses import replace

    return replace(finding, data={**finding.data, **data})
