"""`python -m blap_cli`, the same as `blap`."""

import sys

from . import main

sys.exit(main())
