"""Data tests never touch the network: offline flags and a throw-away HF_HOME, set before
`datasets` is imported (it reads them at import time)."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="gaugeformer-hf-home-")
