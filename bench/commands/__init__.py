"""One module per command of ``python -m bench`` (bench/cli.py's table): each has ``add_parser(sub)`` and
``main(args)``. A command module imports at its top only what is torch-free (the CLI imports every one of them to
build its parser); what needs torch it imports in ``main``."""
