"""``python -m sector ...`` is the same as ``sector ...``."""

import sys

from sector.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
