"""``python -m app.cli ...``: the ``leadflow`` command."""

import sys

from app.cli import main

sys.exit(main())
