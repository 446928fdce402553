import sys

from offline_trainer.cli import main

sys.exit(main())
