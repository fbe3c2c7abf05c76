"""WikiText cleaning, datasets loading, token cache, batches, embedded corpus."""

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from gaugeformer.data import batches as B
from gaugeformer.data import cache, vocab
from gaugeformer.data import corpus as D
from gaugeformer.data import text as T
from gaugeformer.data.tokenizer import get_gpt2_encoding

# -- cleaning (spec §9.2): one test per rule ------------------------------------------------------


def test_rows_blank_dropped_and_unstripped_rows_joined():
    rows = ["", " \n", " = Title = \n", "\t\n", " Some text . \n", " Tail"]
    assert T.join_wikitext_rows(rows) == " = Title = \n\n\n Some text . \n\n\n Tail"


def test_at_fixes():
    assert T.clean_wikitext_text("a well @-@ known b") == "a well-known b"
    assert T.clean_wikitext_text("1 @,@ 000 people") == "1,000 people"
    assert T.clean_wikitext_text("3 @.@ 5 km") == "3.5 km"
    # only the spaced forms are rewritten
    assert T.clean_wikitext_text("x@-@y x @-@y") == "x@-@y x @-@y"


def test_unk_removed_and_spaces_collapsed_only_when_present():
    assert T.clean_wikitext_text("a  <unk>  b\t\tc \n\n d") == "a b c \n\n d"
    assert T.clean_wikitext_text("a  b\t\tc") == "a  b\t\tc"  # no <unk>: spacing untouched


def test_unk_collapse_happens_before_at_fixes():
    assert T.clean_wikitext_text("<unk> x  @-@  y") == " x-y"


def test_clean_rows_end_to_end():
    rows = ["", " = A = \n", " \n", " 2 @,@ 500 well @-@ known , 1 @.@ 5 . \n"]
    assert T.clean_wikitext_rows(rows) == " = A = \n\n\n 2,500 well-known , 1.5 . \n"


# -- tokenisation ---------------------------------------------------------------------------------


def test_chunked_encode_equals_single_encode():
    enc = get_gpt2_encoding()
    text = (
        T.clean_wikitext_rows(
            [" = A = \n", "  x  \n", " it's 1,000 — ok!!  \n", "\n", " tail   \t \n"] * 200
        )
        + D.load_embedded_corpus()[:20000]
    )
    want = np.asarray(enc.encode(text), np.int32)
    for chunk in (7, 100, 4096):
        got = T.encode_text(text, enc, chunk_chars=chunk, progress=False)
        np.testing.assert_array_equal(got, want)
    head = text[:3000]  # chunk_chars=1 cuts at every safe position
    got = T.encode_text(head, enc, chunk_chars=1, progress=False)
    np.testing.assert_array_equal(got, enc.encode(head))
    assert T.encode_text("", enc).shape == (0,)


def test_safe_cut_points_partition():
    text = "ab  cd\n\nef gh"
    cuts = T.safe_cut_points(text, 2)
    assert cuts[0] == 0 and cuts[-1] == len(text) and cuts == sorted(set(cuts))
    for c in cuts[1:-1]:
        assert not text[c - 1].isspace() and text[c].isspace()


def test_bytes_encode():
    assert T.encode_text("hé", "bytes").tolist() == [104, 195, 169]


# -- datasets code path with a local WikiText-format file -----------------------------------------


@pytest.fixture()
def wiki_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": D.make_wikitext_format_file(tmp_path / "wiki.train.raw", n_articles=3, seed=1),
        "validation": D.make_wikitext_format_file(tmp_path / "wiki.valid.raw", seed=2),
    }


def test_wikitext_format_file_shape(wiki_files):
    text = wiki_files["train"].read_text()
    lines = text.splitlines(keepends=True)
    assert lines[0] == " \n" and " = Article 0 = \n" in lines and " = = Section 1 = = \n" in lines
    assert all(line.endswith("\n") for line in lines)
    for marker in (" @-@ ", " @,@ ", " @.@ "):
        assert marker in text


def test_local_file_rows_through_datasets(wiki_files, tmp_path):
    rows = D.load_wikitext_rows(
        "wikitext-2", "train", data_files=wiki_files, hf_cache_dir=tmp_path / "hf"
    )
    raw = wiki_files["train"].read_text()
    assert rows == raw.splitlines(keepends=True)  # one row per line, "\n" kept (like the hub rows)
    cleaned = T.clean_wikitext_rows(rows)
    assert "@" not in cleaned and "\n\n\n" in cleaned and cleaned.startswith(" = Article 0 = \n")


def test_load_wikitext_local_and_cache_hit(wiki_files, tmp_path, monkeypatch):
    kwargs = dict(data_files=wiki_files, cache_dir=tmp_path / "tok", hf_cache_dir=tmp_path / "hf")
    ds = D.load_wikitext("wikitext-2", **kwargs)
    enc = get_gpt2_encoding()
    rows = wiki_files["validation"].read_text().splitlines(keepends=True)
    want = enc.encode(T.clean_wikitext_rows(rows))
    np.testing.assert_array_equal(ds.validation, want)
    assert ds.train.dtype == np.int32 and ds.vocab_size == 50257 and ds.tokenizer == "gpt2"
    assert ds.vocab_map is None
    files = sorted((tmp_path / "tok").glob("*.npy"))
    assert len(files) == 2 and all("clean-" in f.name and ".gpt2." in f.name for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]

    def boom(*args, **kwargs):
        raise AssertionError("re-tokenised or re-read despite the cache")

    monkeypatch.setattr(D, "encode_text", boom)
    monkeypatch.setattr(D, "load_wikitext_rows", boom)
    again = D.load_wikitext("wikitext-2", **kwargs)
    np.testing.assert_array_equal(again.train, ds.train)
    np.testing.assert_array_equal(again.validation, ds.validation)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_cache_key_depends_on_content_tokenizer_and_cleaning(wiki_files, tmp_path, monkeypatch):
    tag, _ = D._source_tag("wikitext-2", "train", wiki_files)
    p1 = cache.token_cache_path(tmp_path, tag, "train", "gpt2")
    assert p1 != cache.token_cache_path(tmp_path, tag, "train", "bytes")
    assert p1 != cache.token_cache_path(tmp_path, tag, "validation", "gpt2")
    monkeypatch.setattr(cache, "CLEANING_VERSION", "other")
    assert p1 != cache.token_cache_path(tmp_path, tag, "train", "gpt2")
    time.sleep(0.01)
    wiki_files["train"].write_text(wiki_files["train"].read_text() + " extra \n")
    assert D._source_tag("wikitext-2", "train", wiki_files)[0] != tag


def test_bytes_dataset_and_vocab_restriction(wiki_files, tmp_path):
    kwargs = dict(data_files=wiki_files, cache_dir=tmp_path / "tok", hf_cache_dir=tmp_path / "hf")
    ds = D.load_wikitext("wikitext-2", tokenizer="bytes", **kwargs)
    assert ds.vocab_size == 256 and ds.train.max() < 256
    small = D.load_wikitext("wikitext-2", vocab_size=20, **kwargs)
    assert small.vocab_size == 20 and small.vocab_map is not None
    assert small.train.max() <= 19 and small.validation.max() <= 19


def test_missing_local_file_error(tmp_path):
    with pytest.raises(D.DatasetUnavailableError, match="not found"):
        D.load_wikitext(
            "wikitext-2", data_files={"train": tmp_path / "nope.raw"}, cache_dir=tmp_path
        )


# -- hub path offline -----------------------------------------------------------------------------


def test_hub_offline_fails_fast_with_clear_error(tmp_path):
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("datasets was imported without HF_HUB_OFFLINE=1")
    t0 = time.perf_counter()
    with pytest.raises(D.DatasetUnavailableError, match=r"--data-files.*") as err:
        D.load_wikitext("wikitext-2", cache_dir=tmp_path / "tok", hf_cache_dir=tmp_path / "hf")
    assert time.perf_counter() - t0 < 10
    assert "network" in str(err.value) and "Salesforce/wikitext" in str(err.value)


def test_hub_error_is_wrapped(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Offline mode is enabled.")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(D.DatasetUnavailableError, match="wikitext-103-raw-v1"):
        D.load_wikitext_rows("wikitext-103", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_wikitext_rows("ptb", "train")


# -- vocabulary restriction (spec §9.3) -----------------------------------------------------------


def test_vocab_map_frequency_ties_first_seen():
    train = np.array([9, 5, 5, 7, 7, 3, 3, 3, 8], np.int32)
    vmap = vocab.build_vocab_map(train, vocab_size=4)  # keep 3: counts 3→3, then 5,7 (tie: 5 first)
    np.testing.assert_array_equal(vmap.kept_ids, [3, 5, 7])
    np.testing.assert_array_equal(vmap.apply(train, vmap.train_unk), [3, 1, 1, 2, 2, 0, 0, 0, 3])
    np.testing.assert_array_equal(vmap.to_original([0, 3, 2]), [3, 7])
    few = vocab.build_vocab_map(np.array([1, 1, 2]), vocab_size=10)  # reference edge case
    assert few.train_unk == 9 and few.validation_unk == 2


# -- batches (spec §9.4) --------------------------------------------------------------------------


def test_train_windows_are_next_token_pairs():
    tokens = np.arange(100, dtype=np.int32)
    tb = B.TrainBatches(tokens, batch_size=4, seq_len=8, seed=3)
    assert tb.num_windows == 92 and tb.batches_per_epoch == 23
    x, y = tb.batch(0)
    assert x.shape == y.shape == (4, 8) and x.dtype == np.int32
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[:, 1:], x[:, :-1] + 1)
    starts = np.concatenate([tb.starts(s) for s in range(23)])
    assert len(set(starts.tolist())) == 92  # one epoch = every window once (drop_last: 92 = 23*4)
    assert not np.array_equal(tb.starts(0), tb.starts(23))  # new permutation per epoch


def test_train_iterator_resumes_exactly():
    tokens = np.random.default_rng(0).integers(0, 50257, 5000).astype(np.int32)
    run = B.TrainBatches(tokens, batch_size=8, seq_len=16, seed=7)
    assert run.batches_per_epoch == 623
    it = run.iterate(0)
    full = [next(it) for _ in range(1400)]  # crosses two epoch boundaries
    for k in (0, 5, 617, 623, 1000):
        resumed = B.TrainBatches(tokens, batch_size=8, seq_len=16, seed=7)  # fresh: no state
        it2 = resumed.iterate(k)
        for step, x, y in full[k:]:
            s2, x2, y2 = next(it2)
            assert step == s2
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(y, y2)
    assert run.position(1000) == (1, 377)
    other = B.TrainBatches(tokens, batch_size=8, seq_len=16, seed=8)
    assert not np.array_equal(other.batch(0)[0], full[0][1])


@pytest.mark.parametrize("n,b,t", [(101, 4, 10), (100, 4, 10), (57, 3, 8), (2, 5, 4), (161, 2, 10)])
def test_eval_batches_cover_every_target_once(n, b, t):
    tokens = np.arange(1000, 1000 + n, dtype=np.int32)
    ev = B.EvalBatches(tokens, batch_size=b, seq_len=t)
    seen = []
    for batch in ev:
        assert batch.x.shape == batch.y.shape == batch.mask.shape == (b, t)
        seen.extend(batch.y[batch.mask].tolist())
        np.testing.assert_array_equal(batch.y[batch.mask], batch.x[batch.mask] + 1)
        assert (batch.x[~batch.mask] == 0).all() and (batch.y[~batch.mask] == 0).all()
    assert seen == tokens[1:].tolist()  # each validation target once, in order
    assert sum(int(bt.mask.sum()) for bt in ev) == ev.num_targets == n - 1
    assert len(ev) == -(-ev.num_windows // b)


def test_reference_eval_batches_match_reference_window_span():
    tokens = np.arange(1000, dtype=np.int32)
    batches = list(B.reference_eval_batches(tokens, batch_size=24, seq_len=94, max_batches=5))
    assert len(batches) == 5
    assert batches[-1][0][-1, 0] == 119 and batches[-1][1].max() == 213


# -- embedded corpus ------------------------------------------------------------------------------

BOTCHAN_SHA256 = "8eb9a819d3434619c6544248936423009859352635d40a626d58d7c0314d104f"


def test_embedded_corpus_is_clean_prose():
    text = D.load_embedded_corpus()
    assert hashlib.sha256(text.encode()).hexdigest() == BOTCHAN_SHA256
    assert len(text) == 254_781 and text.count("\n") == 3959
    assert text.startswith("BOTCHAN (MASTER DARLING)") and text.rstrip().endswith("--(THE END)--")
    assert "Gutenberg" not in text and "\r" not in text and "\ufeff" not in text
    for word in ("Kiyo", "Porcupine", "Red Shirt", "Tokyo", "CHAPTER I\n"):
        assert word in text


def test_embedded_split_and_dataset():
    text = D.load_embedded_corpus()
    train, val = D.split_embedded_corpus(text, 0.1)
    assert train + val == text and train.endswith("\n")
    assert 0.09 < len(val) / len(text) < 0.11
    assert D.split_embedded_corpus(text, 0.1) == (train, val)  # deterministic
    ds = D.load_embedded_dataset("gpt2")
    assert (len(ds.train), len(ds.validation)) == (58_101, 6_571) and ds.vocab_size == 50257
    by = D.load_embedded_dataset("bytes")
    assert (len(by.train), len(by.validation)) == (len(train), len(val)) and by.vocab_size == 256
    assert "Botchan" in ds.summary()
