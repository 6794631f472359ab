"""The journal: one schema for every event, and `toolkit journal RUN_DIR` filtered by kind and severity."""

from __future__ import annotations

import json

from toolkit.cli import main as cli_main
from toolkit.journal import Journal, filter_events, read_jsonl, render_event


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        cli_main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def journal(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.event(0, "run_start", command="finetune")
    j.event(5, "dream", "warn", scenario="Use tabs " * 30, passed=False)
    j.event(7, "repetition", "critical", text="region region region")
    j.event(9, "checkpoint", path="x")
    return tmp_path


def test_every_event_has_one_schema_and_is_flushed(tmp_path):
    events = read_jsonl(journal(tmp_path) / "journal.jsonl")  # read back without closing anything
    assert [e["kind"] for e in events] == ["run_start", "dream", "repetition", "checkpoint"]
    assert all(set(e) == {"step", "time", "kind", "severity", "data"} for e in events)


def test_filters_by_kind_and_minimum_severity(tmp_path):
    events = read_jsonl(journal(tmp_path) / "journal.jsonl")
    assert [e["kind"] for e in filter_events(events, severity="warn")] == ["dream", "repetition"]
    assert [e["kind"] for e in filter_events(events, kinds=["checkpoint", "dream"])] == ["dream", "checkpoint"]
    assert filter_events(events, kinds=["dream"], severity="high") == []
    line = render_event(events[1], width=80)
    assert line.startswith("      5") and "warn" in line and "dream" in line and len(line) == 80


def test_toolkit_journal_command(tmp_path, capsys):
    run_dir = journal(tmp_path)
    code, out, _ = run(capsys, "journal", run_dir, "--severity", "high")
    assert code == 0 and out.count("\n") == 1 and "repetition" in out and "critical" in out
    code, out, _ = run(capsys, "journal", run_dir, "--kind", "run_start", "--kind", "checkpoint", "--json")
    assert code == 0 and [json.loads(line)["step"] for line in out.splitlines()] == [0, 9]
    code, out, _ = run(capsys, "journal", run_dir, "--tail", "1")
    assert code == 0 and "checkpoint" in out and "run_start" not in out
    code, _, err = run(capsys, "journal", run_dir, "--severity", "loud")
    assert code == 2 and err.strip() == "error: --severity: unknown severity 'loud' (one of info, warn, high, critical)"
    code, _, err = run(capsys, "journal", tmp_path / "nowhere")
    assert code == 2 and "no journal.jsonl" in err and err.count("\n") == 1
