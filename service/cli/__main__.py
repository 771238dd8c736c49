"""`python -m service.cli`: the same as `auditq`."""

import sys

from service.cli.main import main

sys.exit(main())
