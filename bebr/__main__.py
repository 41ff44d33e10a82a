"""``python -m bebr``: the ``bebr`` command line (see ``bebr.cli``)."""

import sys

from .cli import main

sys.exit(main())
