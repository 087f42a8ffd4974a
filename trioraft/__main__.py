"""`python -m trioraft`: the same as the `trioraft` command."""

from .cli import main

if __name__ == "__main__":
    main()
