"""``python -m gristmill``: the ``gristmill`` command."""

import sys

from gristmill.cli.main import main

sys.exit(main())
