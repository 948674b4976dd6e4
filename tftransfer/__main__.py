"""`python -m tftransfer`: the `tftransfer` command."""

import sys

from tftransfer.cli import main

sys.exit(main())
