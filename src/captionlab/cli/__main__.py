import sys

from captionlab.cli import main

sys.exit(main())
