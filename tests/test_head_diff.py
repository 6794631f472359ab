"""analysis.capture and analysis.head_diff on tiny-hybrid (3 GDN layers x 4 value heads, 1 attention layer x 4
heads): hook shapes and names, the exact GDN implicit matrix, q_proj interleaving, self-diff = nothing, planted
heads (one, two, weak, GDN gates only) found, direct and significant while every other head is neither, a control
run with the same kind of drift keeping the planted heads and dropping the drift, the report page in headless
Chromium at 64 layers x 48 heads, and a real LoRA run dir end to end."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.capture import (MERGED_PREFIX, attention_head_slices, boot_bridge, capture, capture_bridge,
                              capture_model, gdn_head_slices, list_heads, load_capture_model, load_for_capture,
                              prompt_text)
from analysis.head_diff import capture_against, diff_captures, run_head_diff, summarize

ATTN_LAYER = 3  # tiny-hybrid: layers 0-2 GDN, layer 3 full attention
PROBES = [
    {"text": "Line 3: the quick brown fox jumps over the lazy dog while the cat sleeps."},
    {"prompt": "Use tabs for file 4, please."},
    {"messages": [{"role": "user", "content": "User asked for item 2"},
                  {"role": "assistant", "content": "the assistant answered with care"}]},
    {"text": "User asked for item 5; the assistant answered with care and did what was asked."},
    {"prompt": "the lazy dog sleeps while the quick brown fox jumps"},
    {"text": "Line 9: the cat sleeps. Line 10: the fox jumps over the dog."},
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread and lose much to OpenMP waits when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probes") / "probes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROBES))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _save_variant(tiny_model_dir, out: Path, edit) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(out)
    return out


def test_capture_gives_every_head_with_the_expected_shapes(tiny_model_dir, tokenizer):
    caps = capture(str(tiny_model_dir), PROBES[:2], tokenizer)
    assert len(caps) == 2
    for cap in caps:
        T = len(cap["tokens"])
        assert sorted(cap["attention"]) == [f"L3.H{h}" for h in range(4)]
        assert sorted(cap["gdn"]) == [f"L{layer}.H{h}" for layer in range(3) for h in range(4)]
        for pattern in cap["attention"].values():
            assert pattern.shape == (T, T) and pattern.dtype == torch.float32
            assert torch.allclose(pattern.sum(-1), torch.ones(T), atol=1e-5)
            assert torch.all(pattern.triu(1) == 0)  # causal
        for head in cap["gdn"].values():
            assert head["beta"].shape == (T,) and head["log_decay"].shape == (T,)
            assert head["implicit"].shape == (T, T) and torch.all(head["implicit"].triu(1).abs() < 1e-6)
            assert torch.all((head["beta"] > 0) & (head["beta"] < 1)) and torch.all(head["log_decay"] <= 0)
    names = [(h.name, h.kind) for h in list_heads(__import__("transformers").AutoConfig.from_pretrained(
        str(tiny_model_dir)))]
    assert names[:4] == [(f"L0.H{h}", "gdn") for h in range(4)] and names[-1] == ("L3.H3", "attention")


def test_implicit_matrix_reproduces_the_real_gdn_layer(tiny_model_dir, tokenizer):
    """A @ V equals the bridge's core output and, through the layer's own gated norm and out_proj, the output of
    the unmodified transformers GatedDeltaNet layer."""
    from transformers import AutoModelForCausalLM

    bridge = boot_bridge(str(tiny_model_dir))
    cap = capture_bridge(bridge, [PROBES[0]["text"] * 2], tokenizer, keep_raw=True)[0]
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    outputs = {}
    hooks = [hf.model.layers[layer].linear_attn.register_forward_hook(
        lambda mod, args, out, layer=layer: outputs.__setitem__(layer, out)) for layer in range(3)]
    with torch.no_grad():
        hf(torch.tensor([cap["tokens"]]), use_cache=False)
    for h in hooks:
        h.remove()
    for layer in range(3):
        raw, gdn = cap["gdn_raw"][layer], hf.model.layers[layer].linear_attn
        A = torch.stack([cap["gdn"][f"L{layer}.H{h}"]["implicit"] for h in range(4)])  # [H, T, T]
        core = torch.einsum("hij,jhd->ihd", A, raw["v"][0])  # [T, H, dv]
        ref = raw["recurrence_out"][0]
        assert (core - ref).abs().max() <= 1e-4 * ref.abs().max(), layer  # relative: random-init values are ~1e-3
        with torch.no_grad():
            normed = gdn.norm(core.reshape(-1, core.shape[-1]), raw["gate_input"][0].reshape(-1, core.shape[-1]))
            out = gdn.out_proj(normed.reshape(core.shape[0], -1))
        real = outputs[layer][0]
        assert torch.allclose(out, real, atol=1e-4 * max(1.0, real.abs().max().item())), \
            (layer, (out - real).abs().max().item())


def test_q_proj_slicing_follows_the_interleaved_query_and_gate_rows(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    attn = model.model.layers[ATTN_LAYER].self_attn
    d = attn.head_dim
    for h in range(4):
        assert torch.equal(attention_head_slices(attn, h)["q_proj"], attn.q_proj.weight[2 * d * h:2 * d * (h + 1)])

    def perturb_query_of_head_2(m):
        w = attention_head_slices(m.model.layers[ATTN_LAYER].self_attn, 2)["q_proj"]  # a view
        w[:d] += torch.randn(d, w.shape[1], generator=torch.Generator().manual_seed(1)) * 0.5

    def perturb_gate_of_head_2(m):
        attention_head_slices(m.model.layers[ATTN_LAYER].self_attn, 2)["q_proj"][d:] += 0.5

    before = capture(str(tiny_model_dir), PROBES[:2], tokenizer)
    query = capture(str(_save_variant(tiny_model_dir, tmp_path / "q", perturb_query_of_head_2)), PROBES[:2],
                    tokenizer)
    gate = capture(str(_save_variant(tiny_model_dir, tmp_path / "g", perturb_gate_of_head_2)), PROBES[:2], tokenizer)
    for b, q, g in zip(before, query, gate):
        for h in range(4):
            name = f"L{ATTN_LAYER}.H{h}"
            changed = (q["attention"][name] - b["attention"][name]).abs().max().item()
            assert (changed > 1e-3) if h == 2 else (changed == 0.0), (h, changed)
            assert torch.equal(g["attention"][name], b["attention"][name])  # gate rows do not touch the pattern


def test_a_model_against_itself_changes_nothing(tiny_model_dir, probes, tmp_path):
    result = run_head_diff(tiny_model_dir, tiny_model_dir, probes, tmp_path, plot=False)
    assert len(result["heads"]) == 16 and result["n_prompts"] == len(PROBES)
    for h in result["heads"]:
        assert h["score"] <= 1e-6 and h["matrix_distance"] <= 1e-6, h["name"]
        assert not h["significant"] and not h["direct"] and h["p_corrected"] == 1.0, h["name"]
        assert h["weight_rel_change"] == 0.0 and h["excess"] == 0.0
    assert "No head changed" in result["summary"]["concentration"]
    assert result["null"]["kind"] == "propagated" and result["null"]["too_few_probes"]  # 6 probes, 16 heads
    assert "use more probes (at least 9)" in result["summary"]["answers"][0]["answer"]
    for name in ("head_diff.json", "head_diff.md", "head_diff.html"):
        assert (tmp_path / name).is_file(), name


# ---------------------------------------------------------------- planted heads against the null

PLANT_PROBES = [{"text": f"Line {i}: the quick brown fox jumps over the lazy dog while the cat sleeps. "
                         f"User asked for item {i % 7}; the assistant answered with care."} for i in range(12)]


@pytest.fixture(scope="module")
def base_capture(tiny_model_dir):
    """The base captured once on 12 probes (enough for BH over 16 heads: one-sided p >= 2^-12)."""
    model, tokenizer = load_capture_model(str(tiny_model_dir))
    texts = [prompt_text(r, tokenizer) for r in PLANT_PROBES]
    return capture_model(model, texts, tokenizer, keep_mixers=True), texts, tokenizer


def _noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def query(layer: int, head: int, scale: float, seed: int = 2):
    """Add noise of `scale` x the rows' std to the query rows (not the gate rows) of one attention head."""
    def edit(m):
        attn = m.model.layers[layer].self_attn
        rows = attention_head_slices(attn, head)["q_proj"][:attn.head_dim]  # a view
        rows += _noise(rows.shape, seed) * rows.std() * scale
    return edit


def gates(layer: int, head: int, d_a_log: float = 0.0, d_dt_bias: float = 0.0):
    def edit(m):
        sl = gdn_head_slices(m.model.layers[layer].linear_attn, head)
        sl["A_log"] += d_a_log
        sl["dt_bias"] += d_dt_bias
    return edit


def gdn_rows(layer: int, head: int, scale: float, seed: int = 4):
    """Noise of `scale` x std on one GDN value head's own a/b/v rows (not the q/k rows its group shares)."""
    def edit(m):
        sl = gdn_head_slices(m.model.layers[layer].linear_attn, head)
        for key in ("in_proj_a", "in_proj_b", "in_proj_v"):
            sl[key] += _noise(sl[key].shape, seed) * sl[key].std() * scale
    return edit


def drift(scale: float, seed: int):
    """Generic fine-tuning drift: every token-mixer weight of every layer moves a little."""
    def edit(m):
        gen = torch.Generator().manual_seed(seed)
        for layer in m.model.layers:
            mixer = getattr(layer, "linear_attn", None) or layer.self_attn
            for name, p in mixer.named_parameters():
                if p.dim() > 1:
                    p += torch.randn(p.shape, generator=gen) * p.std() * scale
    return edit


def _variant(tiny_model_dir, *edits):
    model, _ = load_capture_model(str(tiny_model_dir))
    with torch.no_grad():
        for edit in edits:
            edit(model)
    return model


def _capture(base_capture, tiny_model_dir, *edits, counterfactual=True):
    cap, texts, tokenizer = base_capture
    return capture_against(_variant(tiny_model_dir, *edits), cap, texts, tokenizer,
                           swap_in=cap.mixers if counterfactual else None)


PLANTED = {
    "one head": ([query(3, 1, 2.0)], {"L3.H1"}),
    "two heads": ([gates(1, 1, d_a_log=-6.0), query(3, 2, 2.0)], {"L1.H1", "L3.H2"}),
    "weak (0.5x)": ([gdn_rows(0, 2, 0.5), query(3, 1, 0.5)], {"L0.H2", "L3.H1"}),
    "GDN gates only": ([gates(1, 3, d_a_log=-0.5), gates(2, 0, d_dt_bias=0.5)], {"L1.H3", "L2.H0"}),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_heads_rank_first_direct_and_significant_and_no_other_head_is(case, base_capture, tiny_model_dir):
    edits, planted = PLANTED[case]
    result = diff_captures(base_capture[0], _capture(base_capture, tiny_model_dir, *edits))
    heads = {h["name"]: h for h in result["heads"]}
    for name, h in heads.items():
        assert h["direct"] == (name in planted), (name, h["weight_rel_change"])
        if name in planted:
            assert h["significant"] and h["p_corrected"] < 0.05 and h["excess"] > 0, (name, h["p_corrected"])
        else:  # inputs may have moved (downstream of a planted head): all of that is its null, exactly
            assert not h["significant"] and h["excess"] == 0.0 and h["direct_score"] == 0.0, (name, h["excess"])
    for kind, summary in result["summary"]["by_kind"].items():
        mine = {n for n in planted if heads[n]["kind"] == kind}
        assert {t["name"] for t in summary["top"][:len(mine)]} == mine, (kind, summary["top"][:3])
    assert result["summary"]["n_significant"] == len(planted)
    if case == "two heads":  # the gate statistics of the long-memory head
        gdn = heads["L1.H1"]
        assert gdn["gates"]["A_log"]["changed"] and abs(gdn["gates"]["A_log"]["delta"] + 6) < 1e-5
        assert not gdn["gates"]["dt_bias"]["changed"]
        tau = gdn["decay_timescale"]
        assert tau["mean_after"] > 100 * tau["mean_before"] and tau["ks_stat"] == 1.0
        assert heads["L3.H2"]["weight_rel_change_parts"]["q_proj"] > 0.1
        assert any(heads[f"L2.H{i}"]["score"] > 1e-3 for i in range(4))  # downstream heads did move ...
        assert all(heads[f"L2.H{i}"]["propagated_score"] == heads[f"L2.H{i}"]["score"] for i in range(4))  # by inputs


def test_a_control_with_the_same_drift_keeps_the_planted_heads_and_drops_the_drift(base_capture, tiny_model_dir):
    """Tuned = drift + two planted heads; control = an independent drift of the same size. Every head is direct
    (drift moves every weight), so weights cannot tell; the control can. (Seed pairs 21/22 ... 81/82 give the same:
    both planted heads, no other head.)"""
    planted = {"L2.H2", "L3.H1"}
    tuned = _capture(base_capture, tiny_model_dir, drift(0.05, seed=11), gates(2, 2, d_a_log=-3.0), query(3, 1, 1.0))
    control = _capture(base_capture, tiny_model_dir, drift(0.05, seed=12), counterfactual=False)
    result = diff_captures(base_capture[0], tuned, control)
    with_control = {h["name"]: h for h in result["heads"]}
    assert all(h["direct"] for h in with_control.values())
    for name in planted:
        h = with_control[name]
        assert h["significant"] and h["fold_vs_typical"] > 3 and h["effect_size"] > 0, h
    drift_only = [n for n, h in with_control.items() if n not in planted and h["layer"] <= 2]  # not downstream
    assert not [n for n in drift_only if with_control[n]["significant"]]
    assert max(with_control[n]["fold_vs_typical"] for n in drift_only) < 1.5
    assert result["null"]["kind"] == "control" and 0.8 < result["null"]["run_to_run"]["typical_ratio"] < 1.5
    # the control matters: against the propagated null every drifted head is significant
    without = {h["name"] for h in diff_captures(base_capture[0], tuned)["heads"] if h["significant"]}
    assert without >= planted and len(without) > len(planted) + len(drift_only) // 2


# ---------------------------------------------------------------- the report page in a real browser


def synthetic_result(n_layers: int = 64, n_heads: int = 48) -> dict:
    """A head-diff result of Qwen3.5-27B's shape (3 GDN layers per attention layer) with 48 heads per layer."""
    rng = np.random.default_rng(0)
    heads = []
    for layer in range(n_layers):
        kind = "attention" if layer % 4 == 3 else "gdn"
        for head in range(n_heads):
            score = float(rng.gamma(2.0, 0.01))
            null = float(score * rng.uniform(0.6, 1.1))
            sig = bool(rng.random() < 0.02)
            heads.append({"name": f"L{layer}.H{head}", "kind": kind, "layer": layer, "head": head, "score": score,
                          "null_score": null, "excess": score - null, "excess_distance": score - null,
                          "ratio_to_null": score / null, "effect_size": 1.0, "p_corrected": 0.01 if sig else 0.6,
                          "significant": sig, "direct": bool(rng.random() < 0.7), "weight_rel_change": 0.01})
    null = {"kind": "control", "test": "Wilcoxon", "correction": "BH", "alpha": 0.05, "n_probes": 31,
            "n_heads_tested": len(heads), "smallest_corrected_p": 0.0, "too_few_probes": False, "probes_needed": 16,
            "run_to_run": {"typical_ratio": 1.1, "ratio_spread": 1.2, "n_heads": len(heads)}}
    return {"base": "base", "tuned": "tuned", "control": "control", "prompts": "probes.jsonl", "max_tokens": 256,
            "n_prompts": 31, "null": null, "heads": heads, "summary": summarize(heads, null),
            "figure_probe": {"index": 0, "text": "Use tabs </script> <b>please</b>"}}


def _chromium():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("chromium or chromedriver not on PATH (.ci/run installs Debian's chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_report_page_in_headless_chromium_at_64_layers_by_48_heads(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from analysis.report_head_diff import pattern_figures, write_html

    rng = np.random.default_rng(1)
    before = rng.dirichlet(np.ones(32), size=32)
    figures = pattern_figures([{"name": "L3.H1", "kind": "attention", "before": before, "after": before[::-1]}])
    page = write_html(synthetic_result(), tmp_path / "head_diff.html", figures)
    driver = _chromium()
    try:
        start = time.perf_counter()
        driver.get(page.as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        seconds = time.perf_counter() - start
        body = driver.find_element(By.TAG_NAME, "body")
        render_ms = float(body.get_attribute("data-render-ms"))
        assert int(body.get_attribute("data-cells")) == 64 * 48
        assert len(driver.find_elements(By.CSS_SELECTOR, "#map-gdn rect.cell")) == 48 * 48
        assert len(driver.find_elements(By.CSS_SELECTOR, "#map-attention rect.cell")) == 16 * 48
        assert driver.find_elements(By.CSS_SELECTOR, "#map-gdn circle.sig")
        assert render_ms < 2000 and seconds < 20, (render_ms, seconds)
        Select(driver.find_element(By.ID, "metric")).select_by_value("logp")
        assert len(driver.find_elements(By.CSS_SELECTOR, "rect.cell")) == 64 * 48
        assert driver.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert len(driver.find_elements(By.CSS_SELECTOR, "dl.answers dt")) >= 4
        assert "</script>" in driver.find_element(By.ID, "figure-probe").text  # escaped, not executed
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        fetched = [u for u in _requests(driver) if u != page.as_uri() and not u.startswith("data:")]
        assert not fetched, fetched
        print(f"64 x 48 heatmaps: rendered in {render_ms:.0f} ms, page ready in {seconds:.1f} s")
        if os.environ.get("TOOLKIT_SCREENSHOT_DIR"):
            target = Path(os.environ["TOOLKIT_SCREENSHOT_DIR"])
            target.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(target / "head_diff.png"))
    finally:
        driver.quit()


def test_a_lora_run_dir_as_tuned_end_to_end(tiny_model_dir, probes, tmp_path):
    import tempfile

    from test_train import run_toolkit, write_recipe

    recipe = write_recipe(tmp_path, tiny_model_dir, "hd-lora", max_steps=4, checkpoint_every=4, eval_every=4)
    run_toolkit("finetune", str(recipe))
    run_dir = tmp_path / "hd-lora"
    merged = load_for_capture(run_dir)
    assert Path(merged, "config.json").is_file() and Path(merged, "tokenizer_config.json").is_file()
    shutil.rmtree(merged)
    before = set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*"))
    run_head_diff(tiny_model_dir, run_dir, probes, tmp_path / "report")
    assert set(Path(tempfile.gettempdir()).glob(f"{MERGED_PREFIX}*")) == before  # the merged copy is removed
    data = json.loads((tmp_path / "report" / "head_diff.json").read_text())
    assert len(data["heads"]) == 16 and {h["kind"] for h in data["heads"]} == {"attention", "gdn"}
    assert any(h["score"] > 1e-6 for h in data["heads"]), "LoRA training changed no head"
    assert any(h["weight_rel_change"] > 0 for h in data["heads"])
    assert all(h["direct"] == (h["weight_rel_change"] > 1e-6) for h in data["heads"])
    s = data["summary"]
    assert s["n_significant"] == 0 or abs(s["share_of_change"]["attention"] + s["share_of_change"]["gdn"] - 1) < 1e-6
    assert (tmp_path / "report" / "head_diff.md").read_text().startswith("# Head diff")


def test_finetune_runs_head_diff_when_the_analysis_section_asks(tmp_path, tiny_model_dir):
    import json as _json

    from test_train import run_toolkit, write_recipe

    from toolkit.journal import read_jsonl

    probes = tmp_path / "probes.jsonl"
    probes.write_text("".join(_json.dumps({"prompt": f"Use tabs for file {i}."}) + "\n" for i in range(4)))
    recipe = write_recipe(tmp_path, tiny_model_dir, "analysed", max_steps=4, checkpoint_every=4, eval_every=4)
    data = _json.loads(recipe.read_text())
    data["analysis"] = {"head_diff": True, "probes": str(probes)}
    recipe.write_text(_json.dumps(data))
    out = run_toolkit("finetune", str(recipe))
    run_dir = tmp_path / "analysed"
    assert (run_dir / "reports" / "head_diff.md").is_file() and "head_diff" in out.stdout
    event = [e for e in read_jsonl(run_dir / "journal.jsonl") if e["kind"] == "head_diff"]
    assert event and event[0]["data"]["summary"]["concentration"]
    cli = run_toolkit("analyze", "head-diff", "--base", str(tiny_model_dir), "--tuned", str(run_dir),
                      "--prompts", str(probes), "--out", str(tmp_path / "cli"), "--control", str(run_dir))
    assert "report:" in cli.stdout and (tmp_path / "cli" / "head_diff.html").is_file()
    data = _json.loads((tmp_path / "cli" / "head_diff.json").read_text())
    assert data["null"]["kind"] == "control" and data["control"] == str(run_dir)
    assert not any(h["significant"] for h in data["heads"])  # a run against itself as control: nothing beyond it
    missing = run_toolkit("analyze", "head-diff", "--base", str(tiny_model_dir), "--tuned", str(run_dir),
                          "--prompts", str(tmp_path / "nope.jsonl"), check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_a_tuned_path_that_is_no_model_is_a_one_line_error(tmp_path, tiny_model_dir):
    from test_train import run_toolkit

    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"prompt": "Use tabs."}\n')
    (tmp_path / "empty").mkdir()
    out = run_toolkit("analyze", "head-diff", "--base", str(tiny_model_dir), "--tuned", str(tmp_path / "empty"),
                      "--prompts", str(probes), "--out", str(tmp_path / "out"), check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not a model dir, adapter dir or run dir" in out.stderr
