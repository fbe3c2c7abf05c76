"""Data pipeline; callers import the submodules:

* :mod:`~gaugeformer.data.tokenizer`: the one tokenizer type (``Tokenizer``, ``get_tokenizer``) and
  its codecs (offline GPT-2 BPE, UTF-8 bytes);
* :mod:`~gaugeformer.data.vocab`: the reference's restricted vocabulary (``VocabMap``);
* :mod:`~gaugeformer.data.text`: WikiText cleaning and the chunked encode;
* :mod:`~gaugeformer.data.corpus`: WikiText and the embedded corpus → ``TokenDataset``;
* :mod:`~gaugeformer.data.cache`: the ``.npy`` token cache;
* :mod:`~gaugeformer.data.batches`: training and evaluation batches.
"""
