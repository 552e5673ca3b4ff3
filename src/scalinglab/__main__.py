"""`python -m scalinglab ...` is the same as the `scalinglab` command."""

from scalinglab.cli import main

main()
