"""`python -m travel ...` (and `torchrun -m travel fit ...`) run the command-line interface."""

from travel.cli import main

main()
