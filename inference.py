"""inference.py: not yet available (the end-to-end pipeline lands with the pipeline issue)."""

import sys


def main() -> None:
    sys.exit("inference.py is not yet available in this reimplementation; see README.md for what works today.")


if __name__ == "__main__":
    main()
