import sys

from dq.cli import main

sys.exit(main())
