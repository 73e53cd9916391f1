import sys

from secinfer.cli import main

sys.exit(main())
