"""The one tokenizer type (plain, byte and restricted vocabularies) and its codecs: GPT-2 BPE
(offline, sha256-verified) and UTF-8 bytes."""

from pathlib import Path

import numpy as np
import pytest

from gaugeformer.data import tokenizer as tk


@pytest.fixture(scope="module")
def gpt2():
    return tk.get_gpt2_encoding()


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode("Hello world") == [15496, 995]


def test_gpt2_metadata(gpt2):
    assert gpt2.name == "gpt2"
    assert gpt2.n_vocab == tk.GPT2_N_VOCAB == 50257
    assert gpt2.eot_token == tk.GPT2_EOT == 50256
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_gpt2_pattern_matches_tiktoken():
    from tiktoken_ext.openai_public import r50k_pat_str

    assert tk.R50K_PAT_STR == r50k_pat_str


def test_gpt2_round_trip(gpt2):
    text = " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : 1,000-year-old, 3.5 km 🙂\t\n"
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text
    assert max(ids) < 50257


def test_get_tokenizer_dispatch(gpt2):
    tok = tk.get_tokenizer("gpt2")
    assert isinstance(tok, tk.Tokenizer) and tok.encoding is gpt2  # the cached codec
    assert (tok.name, tok.vocab_size, tok.restricted) == ("gpt2", 50257, False)
    assert tok.encode("hello world").tolist() == [31373, 995]
    assert tok.decode([15496, 995]) == "Hello world" and tok.describe() == "GPT-2 BPE"
    assert isinstance(tk.get_tokenizer("bytes").encoding, tk.ByteEncoding)
    assert tk.get_tokenizer("bytes").vocab_size == 256
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tk.get_tokenizer("sentencepiece")


def test_missing_asset_error_names_setup(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"make setup.*tools/fetch_assets\.sh"):
        tk.get_gpt2_encoding(tmp_path / "absent.tiktoken")


def test_corrupt_asset_rejected(tmp_path: Path):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_text("IQ== 0\n")
    with pytest.raises(ValueError, match="[Hh]ash"):
        tk.get_gpt2_encoding(bad)


def test_byte_encoding():
    bt = tk.ByteEncoding()
    assert bt.n_vocab == 256 and bt.name == "bytes"
    assert bt.encode("hi é") == [104, 105, 32, 195, 169]
    text = "Botchan — 坊っちゃん\n"
    assert bt.decode(bt.encode(text)) == text
    assert bt.encode_to_numpy(text).tolist() == bt.encode(text)
    assert bt.decode([0xFF]) == "\ufffd"
    assert bt.encode_batch(["a", "b"]) == [[97], [98]]
    tok = tk.get_tokenizer("bytes")
    assert tok.encode(text).tolist() == bt.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.pieces([104, 195]) == [b"h", b"\xc3"]  # partial UTF-8 kept per token


def test_restricted_tokenizer_round_trip_and_unk():
    """kept ids [104, 105, 108] of the byte tokenizer ('h', 'i', 'l'): V = 4, UNK = 3."""
    tok = tk.get_tokenizer("bytes", kept_ids=[104, 105, 108])
    assert tok.restricted and tok.n_vocab == 4 and tok.name == "bytes"
    assert tok.encode("hill").tolist() == [0, 1, 2, 2] and tok.encode("hill").dtype == np.int32
    assert tok.encode("hello").tolist() == [0, 3, 2, 2, 3]  # 'e', 'o' are not kept -> UNK
    assert tok.decode([0, 1, 2, 2]) == "hill"
    assert tok.pieces([0, 3]) == [b"h", b"<unk>"]
    assert tok.decode([0, 3, 2, 2, 3]) == "h<unk>ll<unk>"  # UNKs shown, as every piece
    assert tok.describe() == "UTF-8 bytes restricted to 4 ids"
    wide = tk.get_tokenizer("bytes", kept_ids=[104, 105], vocab_size=8)
    assert wide.n_vocab == 8 and wide.encode("hix").tolist() == [0, 1, 7]
    # the checkpoint record round-trips, kept ids included
    meta = wide.to_meta()
    assert meta == {"kind": "bytes", "vocab_size": 8, "kept_ids": [104, 105]}
    back = tk.Tokenizer.from_meta(meta)
    assert back.encode("hix").tolist() == [0, 1, 7] and back.kept_ids.tolist() == [104, 105]


def test_restricted_tokenizer_matches_vocab_map():
    from gaugeformer.data.vocab import build_vocab_map

    ids = np.array([5, 5, 9, 7, 9, 5, 2, 11], np.int64)
    vmap = build_vocab_map(ids, 4)  # three most frequent: 5, 9, then 7 (first seen of the ties)
    tok = tk.Tokenizer("bytes", vmap.vocab_size, vmap.kept_ids)
    assert list(vmap.kept_ids) == [5, 7, 9]
    text = bytes([5, 9, 2, 7]).decode()
    assert tok.encode(text).tolist() == vmap.apply(np.array([5, 9, 2, 7]), vmap.train_unk).tolist()
    assert tok.encode(text).tolist() == [0, 2, 3, 1]


@pytest.mark.parametrize("kwargs,needle", [
    ({"kept_ids": [3, 2]}, "ascending"),
    ({"kept_ids": [1, 300]}, "[0, 256)"),
    ({"kept_ids": [1, 2], "vocab_size": 2}, "no UNK"),
    ({"vocab_size": 100}, "needs its kept_ids"),
])
def test_restricted_tokenizer_errors(kwargs, needle):
    with pytest.raises(ValueError) as err:
        tk.get_tokenizer("bytes", **kwargs)
    assert needle in str(err.value)
