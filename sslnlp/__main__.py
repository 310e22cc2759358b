"""`python -m sslnlp ...` (also what `accelerate launch -m sslnlp ...` runs)."""

from sslnlp.cli import main

if __name__ == "__main__":
    main()
