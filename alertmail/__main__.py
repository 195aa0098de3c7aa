"""`python -m alertmail`: the same as the `alertmail` command."""

from alertmail.cli import main

main()
