"""curator's command line (package ``curator.cli``): click commands that parse options, build a config, call one library function, and render."""
