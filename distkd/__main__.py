from distkd.cli import run

run()
