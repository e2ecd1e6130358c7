"""``python -m xchm.cli`` runs the ``xchm`` command, like ``python -m xchm``."""

import sys

from xchm.cli import main

sys.exit(main())
