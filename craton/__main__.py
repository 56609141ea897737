"""``python -m craton`` is the ``craton`` command."""

import sys

from craton.cli import main

sys.exit(main())
