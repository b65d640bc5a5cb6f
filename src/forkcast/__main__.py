import sys

from forkcast.cli import main

sys.exit(main())
