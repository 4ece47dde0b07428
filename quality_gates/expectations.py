"""A Great Expectations suite per data asset, validated in an ephemeral context, with Data Docs.

Nothing is stored in a GX project or sent anywhere: the context lives in memory (analytics off) and
only the Data Docs HTML is written, into a directory the caller chooses (the `expectations`
checks stage it under the artifacts root, as `data_docs/<stamp>-<hash>/index.html`).

The suites state what every data asset must look like whatever its source: the fields exist, are
never null, have lengths within the pandera bounds, and records are unique.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quality_gates.schemas import MAX_ANSWER_CHARS, MAX_PROMPT_CHARS, SCHEMA_BY_ASSET, records_frame

logger = logging.getLogger(__name__)

DATA_DOCS_SITE = "rlhf_quality_gates"
DATA_DOCS_INDEX = "index.html"


def build_suite(asset_name: str):
    """The expectation suite of one data asset (its columns come from the asset's pandera schema)."""
    import great_expectations as gx

    columns = list(SCHEMA_BY_ASSET[asset_name].columns)
    suite = gx.ExpectationSuite(name=f"{asset_name}_suite")
    suite.add_expectation(gx.expectations.ExpectTableRowCountToBeBetween(min_value=1))
    for column in columns:
        max_chars = MAX_PROMPT_CHARS if column == "prompt" else MAX_ANSWER_CHARS
        suite.add_expectation(gx.expectations.ExpectColumnToExist(column=column))
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
        suite.add_expectation(gx.expectations.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, max_value=max_chars))
    if len(columns) == 1:
        suite.add_expectation(gx.expectations.ExpectColumnValuesToBeUnique(column=columns[0]))
    else:
        suite.add_expectation(gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=columns))
    return suite


def _ephemeral_context(docs_dir: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={
            DATA_DOCS_SITE: {
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            }
        },
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def validate_with_expectations(
    records: Sequence[dict[str, Any]], asset_name: str, docs_dir: Path, max_rows: int = 10
) -> dict[str, Any]:
    """Validate the records against the asset's suite and write Data Docs into `docs_dir`.

    Returns {"success", "results": one row per expectation, "offending_rows": the first unexpected
    values (rows from 1), "data_docs_index": path of the Data Docs index.html}.
    """
    import great_expectations as gx

    docs_dir = Path(docs_dir)
    context = _ephemeral_context(docs_dir)
    suite = context.suites.add(build_suite(asset_name))
    batch = context.data_sources.add_pandas("records").add_dataframe_asset(asset_name).add_batch_definition_whole_dataframe("all")
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=asset_name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{asset_name}_checkpoint",
        validation_definitions=[validation],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DATA_DOCS_SITE])],
        result_format={"result_format": "COMPLETE"},
    ))
    frame = records_frame(records, list(SCHEMA_BY_ASSET[asset_name].columns))
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    results, offending = [], []
    for run_result in outcome.run_results.values():
        for result in run_result.results:
            kwargs = result.expectation_config.kwargs
            column = kwargs.get("column") or ",".join(kwargs.get("column_list") or []) or "(table)"
            details = result.result or {}
            results.append({
                "expectation": result.expectation_config.type, "column": column, "success": bool(result.success),
                "unexpected_count": details.get("unexpected_count", 0 if result.success else None),
                "observed_value": details.get("observed_value"),
            })
            indices = details.get("unexpected_index_list") or []
            for index in indices[:max_rows]:
                if isinstance(index, dict):  # compound-column expectations report the row values
                    index = index.get("index")
                if isinstance(index, int) and len(offending) < max_rows:
                    offending.append({
                        "row": index + 1, "expectation": result.expectation_config.type, "column": column,
                        "prompt": records[index].get("prompt"),
                    })
    index_html = docs_dir / DATA_DOCS_INDEX
    if not index_html.exists():
        raise RuntimeError(f"Great Expectations wrote no Data Docs index at {index_html}")
    logger.info(f"{asset_name}: expectations {'passed' if outcome.success else 'FAILED'}; Data Docs at {index_html}")
    return {"success": bool(outcome.success), "results": results, "offending_rows": offending, "data_docs_index": str(index_html)}
