"""Print one training-cost table over several `denoiserep bench` runs (the levers side by side).

.venv/bin/python scripts/bench_summary.py OUT/results_json.tar.gz   # what gpu_check.sh returns
.venv/bin/python scripts/bench_summary.py runs/gpu_check_work        # a folder of bench runs
"""

from __future__ import annotations

import sys

from denoiserep.bench.summary import cost_table, load_runs

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        print(cost_table(load_runs(sys.argv[1])))
    except (FileNotFoundError, OSError, ValueError) as e:
        sys.exit(f"bench_summary: {e}")
