"""``python -m xchm`` runs the ``xchm`` command (also what ``torchrun -m xchm`` needs)."""

import sys

from xchm.cli import main

sys.exit(main())
