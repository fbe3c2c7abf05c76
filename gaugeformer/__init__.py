"""gaugeformer: a gauge-equivariant transformer with KL attention (JAX / Flax NNX).

    import gaugeformer as gf
    loaded = gf.load("runs/tiny")             # a reference .pt, a converted or a training run dir
    logits, cache = gf.run_with_cache(loaded.model, loaded.tokenizer.encode("The cat")[None])
    gf.generate(loaded, "The cat", max_new_tokens=20, temperature=0)
"""

from gaugeformer import _xla

_xla.apply_cpu_defaults()  # before anything starts JAX's backend (see gaugeformer/_xla.py)

from gaugeformer.capture import Intermediates, capture  # noqa: E402
from gaugeformer.config import ModelConfig  # noqa: E402
from gaugeformer.data.tokenizer import get_tokenizer  # noqa: E402
from gaugeformer.loading import Loaded, load  # noqa: E402
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache, run_with_hooks  # noqa: E402
from gaugeformer.sampling import generate  # noqa: E402

__all__ = ["GaugeTransformerLM", "Intermediates", "Loaded", "ModelConfig", "capture", "generate",
           "get_tokenizer", "load", "run_with_cache", "run_with_hooks"]
