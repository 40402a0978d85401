"""`python -m tutorloop.cli`: the `tutorloop` command."""

from tutorloop.cli import app

app()
