import sys

from otelwax.cli import main

sys.exit(main())
