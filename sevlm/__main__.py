import sys

from sevlm.cli import main

sys.exit(main())
