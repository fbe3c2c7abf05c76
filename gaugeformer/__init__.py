"""gaugeformer: a gauge-equivariant transformer with KL attention (JAX / Flax NNX).

    import gaugeformer as gf
    loaded = gf.load("runs/tiny")             # a reference .pt, a converted or a training run dir
    logits, cache = gf.run_with_cache(loaded.model, loaded.tokenizer.encode("The cat")[None])
"""

from gaugeformer.capture import Intermediates, capture
from gaugeformer.config import ModelConfig
from gaugeformer.data.tokenizer import get_tokenizer
from gaugeformer.loading import Loaded, load
from gaugeformer.model.lm import GaugeTransformerLM, run_with_cache, run_with_hooks

# (``generate`` is left to the module of that name: a function here would shadow the submodule
# ``gaugeformer.generate`` that ``import gaugeformer.generate as G`` and the tests rely on.)
__all__ = ["GaugeTransformerLM", "Intermediates", "Loaded", "ModelConfig", "capture",
           "get_tokenizer", "load", "run_with_cache", "run_with_hooks"]
