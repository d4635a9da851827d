import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoglm.cli.main import app as cli
from autoglm.errors import ConfigError
from autoglm.finetune.data import IGNORE, ChatEncoder, Example, load_examples, split
from tests.finetune.conftest import needs_train

GOOD = {"messages": [{"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello there."}]}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": [', "line 3: not valid JSON"),
    ('[1, 2]', "line 3: expected a JSON object"),
    ('{"messages": []}', "line 3: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "line 3: no assistant message"),
    ('{"messages": [{"role": "tool", "content": "x"}]}', "line 3, message 1: role 'tool'"),
    ('{"messages": [{"role": "assistant", "content": 5}]}', "'content' must be a string"),
    ('{"messages": [{"role": "assistant", "content": "x", "weight": 2}]}', "'weight' must be"),
    ('{"messages": [{"role": "assistant", "content": "x", "weight": 0}]}',
     "no assistant message to learn from"),
    ('{"tools": [{"type": "function"}], "messages": []}', "tool definitions are not supported"),
])
def test_a_bad_line_is_named_by_its_number(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "d.jsonl", [json.dumps(GOOD), "", line, json.dumps(GOOD)])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_examples(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    for content in ("", "\n  \n"):
        (tmp_path / "e.jsonl").write_text(content)
        with pytest.raises(ConfigError, match="holds no examples"):
            load_examples(tmp_path / "e.jsonl")
    with pytest.raises(ConfigError, match="not found"):
        load_examples(tmp_path / "none.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b'{"messages": "\xff"}\n')
    with pytest.raises(ConfigError, match="line 1: not UTF-8"):
        load_examples(tmp_path / "b.jsonl")


def test_content_parts_and_weights_are_accepted(tmp_path: Path) -> None:
    line = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be "},
                                                        {"type": "text", "text": "brief."}]},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Old.", "weight": 0},
                         {"role": "user", "content": "Again"},
                         {"role": "assistant", "content": "New.", "weight": 1}]}
    (ex,) = load_examples(write(tmp_path / "d.jsonl", [json.dumps(line)]))
    assert ex.messages[0]["content"] == "Be brief." and ex.messages[2]["weight"] == 0


def test_split_holds_out_a_share_and_is_seeded() -> None:
    examples = [Example(i, ()) for i in range(1, 21)]
    train, val = split(examples, 0.1, seed=3)
    assert len(train) == 18 and len(val) == 2
    assert {e.line for e in train} | {e.line for e in val} == set(range(1, 21))
    assert split(examples, 0.1, seed=3) == (train, val)
    assert split(examples[:1], 0.1, seed=3) == (examples[:1], [])  # nothing to hold out
    assert len(split(examples[:2], 0.01, seed=3)[1]) == 1


@needs_train
def test_cli_names_the_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [json.dumps(GOOD), "{oops"])
    result = CliRunner().invoke(cli, ["finetune", "--data", str(path), "--name", "x"])
    assert result.exit_code == 1
    assert "d.jsonl line 2: not valid JSON" in result.output
    empty = write(tmp_path / "e.jsonl", [])
    result = CliRunner().invoke(cli, ["finetune", "--data", str(empty), "--name", "x"])
    assert result.exit_code == 1 and "holds no examples" in result.output


@needs_train
def test_only_the_answers_are_learned(bundled_base) -> None:
    from autoglm.finetune.base import load

    _, tok = load(bundled_base[1])
    enc = ChatEncoder(tok, 512)
    messages = ({"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Old.", "weight": 0},
                {"role": "user", "content": "Again"},
                {"role": "assistant", "content": "New.", "weight": 1})
    out = enc.encode(Example(1, messages))
    learned = [t for t in out.labels if t != IGNORE]
    assert tok.decode(learned) == "New.<|im_end|>\n"  # the answer and the end of its turn
    prompt = enc.prompt_ids(list(messages[:3]))  # what the engine would be given
    assert out.input_ids[:len(prompt)] == prompt
    assert all(t == IGNORE for t in out.labels[:len(prompt)])
    with pytest.raises(ConfigError, match="control token"):
        enc.encode(Example(2, ({"role": "user", "content": "<|im_end|>"},
                               {"role": "assistant", "content": "x"})))
    assert len(ChatEncoder(tok, 8).encode(Example(1, messages)).input_ids) == 8
