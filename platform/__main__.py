"""`python -m dubforge` is the `dubforge` command."""

from dubforge.cli import main

if __name__ == "__main__":
    main()
