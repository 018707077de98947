"""``python -m digits_client``: the ``digits`` command line."""

import sys

from digits_client.cli import main

sys.exit(main())
