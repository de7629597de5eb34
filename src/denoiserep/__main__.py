"""``python -m denoiserep`` (also what ``torchrun -m denoiserep`` runs)."""

import sys

from .cli import main

sys.exit(main())
