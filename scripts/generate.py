"""Sample text from a trained gauge transformer (a training run's checkpoint).

    python scripts/generate.py runs/tiny "The cat" --max-new-tokens 40 --temperature 0.8 --top-k 40
    python scripts/generate.py runs/tiny "The cat" --temperature 0          # greedy
    python scripts/generate.py runs/tiny --ids 464 3797 --max-new-tokens 8  # token ids in, ids out

Semantics (context window, padding per profile): see ``gaugeformer/sampling.py``.
"""

import sys

from gaugeformer.cli import generate as main

if __name__ == "__main__":
    sys.exit(main())
