"""``python -m recsys.report``: see ``recsys.report.cli``."""
from recsys.report.cli import main

raise SystemExit(main())
