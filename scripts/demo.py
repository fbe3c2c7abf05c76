"""End-to-end demo (``make demo``): train ``configs/tiny.yaml`` on the embedded corpus, then
validate its attention.  The logic is :mod:`diagnostics.demo`; ``--help`` lists every flag."""

import sys

from diagnostics.demo import main

if __name__ == "__main__":
    sys.exit(main())
