from __future__ import annotations

from quire.core.detokenizer import IncrementalDetokenizer


class ByteTokenizer:
    """Each token is one UTF-8 byte, so multi-byte characters span tokens."""

    eos_token_id = None

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_multibyte_characters_wait_for_all_bytes():
    tok = ByteTokenizer()
    d = IncrementalDetokenizer(tok, tok.encode("hi "))
    pieces = []
    for b in "é日x".encode():
        before = d.output_text
        d.update([b])
        pieces.append(d.output_text[len(before):])
    assert "".join(pieces) == "é日x" and "\ufffd" not in "".join(pieces)


def test_hold_back_and_stop():
    tok = ByteTokenizer()
    d = IncrementalDetokenizer(tok, [104], stop_strings=["STOP"])
    assert d.update(tok.encode("abcST")) is None
    assert d.visible_text(False) == "ab"  # "cST" could begin "STOP"
    assert d.update(tok.encode("OPxyz")) == "STOP"
    assert d.output_text == "abc"
