"""`python -m rlft ...` (what `accelerate launch -m rlft train ...` runs)."""

import sys

from rlft.cli import main

sys.exit(main())
