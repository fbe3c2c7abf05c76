"""gaugeformer: a gauge-equivariant transformer with KL attention (JAX / Flax NNX).

    import gaugeformer as gf
    loaded = gf.load("runs/tiny")             # a reference .pt, a converted or a training run dir
    logits, cache = gf.run_with_cache(loaded.model, loaded.tokenizer.encode("The cat")[None])
    gf.generate(loaded, "The cat", max_new_tokens=20, temperature=0)
"""

from gaugeformer.capture import Intermediates, capture
from gaugeformer.config import ModelConfig
from gaugeformer.data.tokenizer import get_tokenizer
from gaugeformer.loading import Loaded, load
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache, run_with_hooks
from gaugeformer.sampling import generate

__all__ = ["GaugeTransformerLM", "Intermediates", "Loaded", "ModelConfig", "capture", "generate",
           "get_tokenizer", "load", "run_with_cache", "run_with_hooks"]
