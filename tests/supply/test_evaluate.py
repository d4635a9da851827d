"""``autoglm model evaluate`` on the bundled model: real quantization, real perplexity,
speed through the real embedded engine, all kept small (tiny text, few tokens)."""

from __future__ import annotations

import json
import math
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoglm.cli.main import app
from autoglm.engine.catalog import embedded_model_path
from autoglm.evaluate.perplexity import nll_of_window, perplexity
from autoglm.evaluate.text import reference_text
from autoglm.settings import EMBEDDED_MODEL_ID

SVG = "{http://www.w3.org/2000/svg}"


def test_negative_log_likelihood_is_that_of_a_softmax() -> None:
    uniform = np.zeros((3, 10), dtype=np.float32)
    assert nll_of_window(uniform, np.array([0, 4, 9])) == pytest.approx(3 * math.log(10))
    sure = np.full((2, 5), -50.0, dtype=np.float32)
    sure[0, 1] = sure[1, 3] = 50.0  # all the probability on tokens 1 and 3
    assert nll_of_window(sure, np.array([1, 3])) == pytest.approx(0.0, abs=1e-6)
    assert nll_of_window(sure, np.array([2, 3])) == pytest.approx(100.0, rel=1e-6)


@pytest.mark.model
def test_perplexity_rewards_predictable_text_and_punishes_shuffled_text() -> None:
    model = embedded_model_path()
    text = reference_text(12_000).text
    words = text.split()
    random.Random(0).shuffle(words)
    real = perplexity(model, text, window=128, max_windows=3, threads=1)
    shuffled = perplexity(model, " ".join(words), window=128, max_windows=3, threads=1)
    # a text that repeats itself: every scored token was seen in the context half
    repeated = perplexity(model, "The quick brown fox jumps over the lazy dog. " * 60,
                          window=128, max_windows=1, threads=1)
    assert real.windows == 3 and real.scored_tokens == 3 * 64
    assert 1.0 < real.value < 100.0 and math.isfinite(shuffled.value)
    assert shuffled.value > 3 * real.value
    assert 1.0 <= repeated.value < 1.5 < real.value


@pytest.mark.model
def test_report_for_two_types_json_chart_and_kept_files(tmp_path: Path) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text(reference_text(6_000).text, encoding="utf-8")
    out, chart = tmp_path / "quantized", tmp_path / "chart.svg"
    result = CliRunner().invoke(app, [
        "model", "evaluate", EMBEDDED_MODEL_ID, "--types", "q8_0,q4_0", "--text", str(text),
        "--window", "64", "--windows", "2", "--streams", "2", "--speed-tokens", "4",
        "--speed-rounds", "1", "--format", "json", "--output-dir", str(out),
        "--chart", str(chart)], env={"AUTOGLM_N_THREADS": "1"})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "type": "q4_1"}
    assert report["text"]["source"] == "file tiny.txt" and len(report["text"]["sha256"]) == 64
    assert report["perplexity"]["scored_tokens"] == 2 * 32 and report["requantized"] is True
    assert "requantized" in report["note"] and report["speed"]["streams"] == 2
    rows = {r["type"]: r for r in report["rows"]}
    assert [r["type"] for r in report["rows"]] == ["q4_1", "q8_0", "q4_0"]
    assert rows["q4_1"]["source"] is True and rows["q4_1"]["ppl_delta_pct"] is None
    for r in report["rows"]:
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1.0
        assert r["tokens_per_s_1"] > 0 and r["tokens_per_s_concurrent"] > 0
        assert r["ttft_ms"] > 0 and r["file_size_bytes"] > 0
    assert rows["q8_0"]["file_size_bytes"] > rows["q4_1"]["file_size_bytes"] \
        > rows["q4_0"]["file_size_bytes"]
    assert rows["q4_0"]["ppl_delta_pct"] == pytest.approx(
        (rows["q4_0"]["perplexity"] / rows["q4_1"]["perplexity"] - 1) * 100, abs=0.02)
    # the files are kept where asked, and nothing is registered
    assert sorted(p.name for p in out.iterdir()) == [
        "SmolLM2-135M-Instruct.Q4_0.gguf", "SmolLM2-135M-Instruct.Q8_0.gguf"]
    assert not (tmp_path / "data" / "models").exists()
    root = ET.parse(chart).getroot()
    points = root.findall(f".//{SVG}circle[@class='point']")
    assert sorted(p.get("data-type") for p in points) == ["q4_0", "q4_1", "q8_0"]


@pytest.mark.parametrize(("args", "message"), [
    (["--types", "q8_0,q9_9"], "unknown quantization type 'q9_9'"),
    (["--types", ","], "no quantization types given"),
    (["--format", "yaml"], "unknown --format 'yaml'"),
    (["--chart", "c.png"], "only SVG charts"),
    (["--text", "/nonexistent/text.txt"], "text file not found"),
])
def test_bad_arguments_fail_with_one_line_before_any_work(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["model", "evaluate", EMBEDDED_MODEL_ID, *args])
    assert result.exit_code == 1 and message in result.stderr, result.output


def test_an_unknown_model_is_named() -> None:
    result = CliRunner().invoke(app, ["model", "evaluate", "no-such-model", "--types", "q8_0"])
    assert result.exit_code == 1
    assert "no model named 'no-such-model'" in result.stderr and EMBEDDED_MODEL_ID in \
        result.stderr


@pytest.mark.model
def test_a_type_llama_cpp_cannot_make_fails_before_measuring(tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["model", "evaluate", EMBEDDED_MODEL_ID, "--types",
                                      "iq2_xxs", "--output-dir", str(out)],
                                env={"AUTOGLM_N_THREADS": "1"})
    assert result.exit_code == 1
    assert "could not quantize" in result.stderr and "importance matrix" in result.stderr
    assert "perplexity" not in result.stderr  # nothing was measured
    assert list(out.iterdir()) == []  # no half-written file left
