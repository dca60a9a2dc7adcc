"""`python -m mmengine.cli ...`: the same as the `mmengine` command (tests and the demo start
child engines this way, independent of the console script being on PATH)."""

from mmengine.cli.app import main

main()
