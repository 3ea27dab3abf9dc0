"""Python helpers for the cluster launchers in this folder (``local_cluster``: ``local.sh`` on free ports).

Imported as ``cluster.local_cluster`` with the repository root on ``sys.path`` (the tests, the
benchmarks); not part of the installed ``hpo`` package.
"""
