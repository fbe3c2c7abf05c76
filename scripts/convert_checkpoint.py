#!/usr/bin/env python
"""Convert a PyTorch reference checkpoint into a gaugeformer orbax checkpoint (and validate it).

    python scripts/convert_checkpoint.py tests/fixtures/T_A_v256/best_model.pt --out /tmp/T_A \\
        --validate tests/fixtures/T_A_v256/golden.npz

Exit status: 0 converted (and validated), 1 a validation failed, 2 an error (one line on stderr).
See gaugeformer/convert/convert.py for the config recovery order and the orbax layout.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gaugeformer.convert.convert import run  # noqa: E402 (after the sys.path line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help=".pt/.pth/.ckpt (torch.save) or .safetensors file")
    p.add_argument("--out", required=True, help="output directory (orbax checkpoint)")
    p.add_argument("--config", help="model config (gaugeformer or reference JSON/YAML); default: "
                   "model_config.json / experiment_config.json beside the checkpoint, else "
                   "inferred from the weights")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--no-optimizer", action="store_true", help="do not convert the AdamW state")
    p.add_argument("--validate", metavar="GOLDEN_NPZ",
                   help="compare the converted model with a reference golden.npz")
    p.add_argument("--validate-live", metavar="REPO_DIR",
                   help="compare with the live PyTorch reference (needs torch and a checkout)")
    p.add_argument("--x64", action="store_true",
                   help="also evaluate the converted model in float64 for every validation (always "
                   "done when golden64.npz lies beside the golden file or a strict check fails)")
    p.add_argument("--json", metavar="OUT", help="write a JSON report")
    a = p.parse_args(argv)
    return run(a.checkpoint, a.out, config=a.config, force=a.force, validate=a.validate,
               validate_live_repo=a.validate_live, json_out=a.json,
               include_optimizer=not a.no_optimizer, x64=a.x64)


if __name__ == "__main__":
    sys.exit(main())
