from autoglm.engine.llamacpp.text import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.push(p) for p in pieces]


def test_character_split_across_tokens_is_sent_whole() -> None:
    data = "你好😀".encode()
    pieces = [data[i:i + 1] for i in range(len(data))]  # one byte per "token"
    s = TextStream([])
    out = feed(s, pieces)
    assert "".join(out) == "你好😀"
    assert all("\ufffd" not in o for o in out)
    assert [o for o in out if o] == ["你", "好", "😀"]


def test_half_character_at_the_end_is_dropped() -> None:
    s = TextStream([])
    data = "ab😀".encode()
    assert s.push(data[:4]) == "ab"
    assert s.flush() == ""


def test_stop_string_across_pieces_is_never_sent() -> None:
    s = TextStream(["END"])
    out = feed(s, [b"hello E", b"N", b"D and more"])
    assert "".join(out) == "hello "
    assert s.stopped
    assert s.push(b"more") == ""


def test_held_back_prefix_is_released_when_not_a_stop() -> None:
    s = TextStream(["END"])
    assert s.push(b"hello E") == "hello "
    assert s.push(b"Xtra") == "EXtra"
    assert s.flush() == ""


def test_flush_releases_held_text_at_end() -> None:
    s = TextStream(["\n\n"])
    assert s.push(b"line\n") == "line"
    assert s.flush() == "\n"


def test_earliest_stop_wins() -> None:
    s = TextStream(["zz", "b"])
    assert s.push(b"aabzz") == "aa"
