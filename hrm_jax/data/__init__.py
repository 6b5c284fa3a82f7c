"""Training data: the data_io sampled format, PrefixLM packing, multipack, a grain pipeline,
the JSONL -> data_io writer and the embedded synthetic demo set.

Where things are: `sampled.py` reads/validates/writes a sampled directory, `packing.py` turns
examples into row pieces, `multipack.py` plans rows (LPT), `pipeline.py` serves batches,
`prepare.py` converts JSONL/Parquet (streaming), `demo.py` generates the demo tasks and tokenizer.
"""

from hrm_jax.data.demo import DemoData, ensure_demo_data
from hrm_jax.data.multipack import EpochPlan, Multipack, lpt_assign, lpt_fits, plan_epoch
from hrm_jax.data.packing import IGNORE_LABEL, pack_rows
from hrm_jax.data.pipeline import Pipeline, PipelineIterator
from hrm_jax.data.prepare import PrepareSummary, prepare_jsonl
from hrm_jax.data.sampled import (DataError, Examples, SampledData, concat_examples, open_sampled,
                                  sampled_writer, write_sampled)

__all__ = [
    "DataError", "DemoData", "EpochPlan", "Examples", "IGNORE_LABEL", "Multipack", "Pipeline",
    "PipelineIterator", "PrepareSummary", "SampledData", "concat_examples", "ensure_demo_data",
    "lpt_assign", "lpt_fits", "open_sampled", "pack_rows", "plan_epoch", "prepare_jsonl",
    "sampled_writer", "write_sampled",
]
