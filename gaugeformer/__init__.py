"""gaugeformer: a gauge-equivariant transformer with KL attention (JAX / Flax NNX).

    import gaugeformer as gf
    loaded = gf.load("runs/tiny")             # a reference .pt, a converted or a training run dir
    logits, cache = gf.run_with_cache(loaded.model, loaded.tokenizer.encode("The cat")[None])
"""

from gaugeformer.capture import Intermediates, capture
from gaugeformer.config import ModelConfig
from gaugeformer.loading import Loaded, load
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache

__all__ = ["GaugeTransformerLM", "Intermediates", "Loaded", "ModelConfig", "capture", "load",
           "run_with_cache"]
