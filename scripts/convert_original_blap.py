"""Convert the original BLAP release (.ckpt + config.json) into a transformers folder. See `--help`."""

import sys

from transformers_blap.conversion.original import main

if __name__ == "__main__":
    sys.exit(main())
