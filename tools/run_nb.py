"""Execute notebooks in place, *all* cells included (also those flagged `slow`/`gpu`), so that their
stored outputs come from a real run of the code they hold. Usage: python tools/run_nb.py nbs/02_metagrad.ipynb [...]
Run `nbdev_export` first (cells import the exported package) and `nbdev_clean` after."""
import os, sys, time
from pathlib import Path
from execnb.shell import CaptureShell

def run_nb(path):
    path = Path(path).resolve()
    cwd = os.getcwd()
    os.chdir(path.parent)  # nbdev_test runs each notebook from its own folder; do the same
    try:
        t0 = time.time()
        CaptureShell().execute(path, path, exc_stop=True)
        print(f"{path.name}: ran every cell in {time.time()-t0:.0f}s")
    finally: os.chdir(cwd)

if __name__ == "__main__":
    for p in sys.argv[1:]: run_nb(p)
