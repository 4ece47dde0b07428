"""Orchestration: the Dagster side (resources, incremental re-runs, provenance, model cards, lineage, execution, launchers).

The one place where warnings are filtered: the beta Dagster APIs the project relies on knowingly.
Every asset records its content hash as `Output(data_version=...)` (what incremental re-runs and
lineage compare), and SFT's asset carries its Dagster Pipes client in `resource_defs` (the
multi-GPU launcher). Dagster marks both parameters beta and warns on every use; this package is
imported before any asset is defined, so the filter applies to them and to nothing else.
"""

import warnings

from dagster import BetaWarning

warnings.filterwarnings(
    "ignore", category=BetaWarning,
    message=r"Parameter `(data_version` of initializer `Output.__init__|resource_defs` of function `asset)`",
)
