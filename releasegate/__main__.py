"""``python3 -m releasegate`` is the same as the ``releasegate`` command."""

from releasegate.cli import main

main()
