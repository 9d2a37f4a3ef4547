"""``python -m training.demo_data``: the same as ``kd-demo-data``."""

import sys

from training.demo_data.cli import main

sys.exit(main())
