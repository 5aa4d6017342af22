"""``python -m gmi``: the command line (see gmi/cli.py)."""
import sys

from .cli import main

sys.exit(main())
