"""`python -m vidiff ...` (and `accelerate launch -m vidiff train ...`)."""
import sys

from vidiff.cli import main

sys.exit(main())
