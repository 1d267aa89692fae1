from maskdla.cli import run_main
from maskdla.experiments.cli import main

run_main(main)
