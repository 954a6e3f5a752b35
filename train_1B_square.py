"""train_1B_square: not yet available in this reimplementation (see the project's issues)."""

import sys


def main() -> None:
    sys.exit("train_1B_square.py is not yet available in this reimplementation; see README.md for what works today.")


if __name__ == "__main__":
    main()
