"""`snakemake`, with the slurm executor checking job status every 2 s: for the cluster tests only.

snakemake-executor-plugin-slurm 2.8 adds 10 s to the pause before the next status check after
every check in which no job finished (2, 12, 22, ... up to 180 s), whatever
--seconds-between-status-checks says (documented in the plugin's docs/further.md; its issue 319
asks to honour the option). On a production cluster that spares slurmdbd; in the test
suite it noticed a 20 s job up to 30 s after it ended, at every level of every DAG. Users run the
plugin unchanged (profiles/slurm); this launcher only pins the pause at the tests' 2 s.
"""

import sys

from snakemake.cli import main
from snakemake_executor_plugin_slurm import Executor

PAUSE_S = 2
Executor.next_seconds_between_status_checks = property(lambda self: PAUSE_S, lambda self, value: None)

if __name__ == "__main__":
    sys.exit(main())
