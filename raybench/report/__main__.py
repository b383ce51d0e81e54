"""``python -m raybench.report STUDY_DIR [--out DIR]``."""

from __future__ import annotations

import sys

from raybench.report.cli import main

sys.exit(main())
