"""Data pipeline: tokenizers, corpora, token caches and batch iterators."""

from gaugeformer.data.text import (
    DatasetUnavailableError,
    EvalBatch,
    EvalBatches,
    TokenDataset,
    TrainBatches,
    VocabMap,
    clean_wikitext_rows,
    clean_wikitext_text,
    encode_text,
    load_embedded_corpus,
    load_embedded_dataset,
    load_wikitext,
    make_wikitext_format_file,
    split_embedded_corpus,
)
from gaugeformer.data.tokenizer import (
    ByteTokenizer,
    RestrictedTokenizer,
    get_gpt2_encoding,
    get_tokenizer,
)

__all__ = [
    "ByteTokenizer",
    "RestrictedTokenizer",
    "DatasetUnavailableError",
    "EvalBatch",
    "EvalBatches",
    "TokenDataset",
    "TrainBatches",
    "VocabMap",
    "clean_wikitext_rows",
    "clean_wikitext_text",
    "encode_text",
    "get_gpt2_encoding",
    "get_tokenizer",
    "load_embedded_corpus",
    "load_embedded_dataset",
    "load_wikitext",
    "make_wikitext_format_file",
    "split_embedded_corpus",
]
