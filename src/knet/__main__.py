"""``python -m knet`` (also what ``torchrun -m knet train ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
