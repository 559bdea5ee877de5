import sys

from utuvox.cli import main

sys.exit(main())
