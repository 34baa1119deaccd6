"""`python -m tireid_core.data.simpedes --params params.yaml --out data/simpedes [--profile tiny]`."""
import sys

from tireid_core.data.simpedes.cli import main

sys.exit(main())
