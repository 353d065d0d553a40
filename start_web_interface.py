"""Start the MLX CPT console: python start_web_interface.py [--help]

The command line lives in web/cli.py (flags, the workspace lock, start-up detection, the
server); this file is where people type it.
"""

from __future__ import annotations

import sys

from web.cli import main

if __name__ == "__main__":
    sys.exit(main())
