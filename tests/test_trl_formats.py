"""Every export format loads with TRL's own dataset helpers and trains one step of TRL's trainer
(SFTTrainer, DPOTrainer, KTOTrainer) on the tiny model, on the CPU: standard and conversational."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from curator.curation.export import export
from curator.model.models import load_model
from tests.test_export import pulled_rows, rated_rows, write

pytest.importorskip("trl")

CASES = [
    ("sft", {"sft_from": "kept"}, False),
    ("sft", {"sft_from": "rated", "conversational": True}, True),
    ("dpo", {"dpo_pairs": "all-pairs"}, False),
    ("dpo", {"dpo_pairs": "all-pairs", "order": "rating", "conversational": True}, True),
    ("kto", {}, False),
    ("kto", {"kto_from": "ratings", "conversational": True}, True),
]


def _train_one_step(fmt: str, data_file: Path, tmp_path: Path) -> float:
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=str(data_file), split="train")
    tiny = load_model("tiny-random")
    common = dict(output_dir=str(tmp_path / f"run-{fmt}"), max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL 1.16 passes transformers' renamed gradient_checkpointing itself
        if fmt == "sft":
            trainer = SFTTrainer(model=tiny.model, args=SFTConfig(**common), train_dataset=ds, processing_class=tiny.tokenizer)
        elif fmt == "dpo":
            trainer = DPOTrainer(model=tiny.model, ref_model=load_model("tiny-random").model, args=DPOConfig(**common), train_dataset=ds, processing_class=tiny.tokenizer)
        else:
            trainer = KTOTrainer(model=tiny.model, ref_model=load_model("tiny-random").model, args=KTOConfig(**common), train_dataset=ds, processing_class=tiny.tokenizer)
        result = trainer.train()
    assert trainer.state.global_step == 1
    return float(result.training_loss)


@pytest.mark.parametrize("fmt, options, conversational", CASES, ids=[f"{f}-{'chat' if c else 'text'}" for f, _, c in CASES])
def test_each_export_loads_with_trl_and_trains_one_step(tmp_path: Path, fmt: str, options: dict, conversational: bool) -> None:
    from trl.data_utils import is_conversational, is_conversational_from_value

    pulled = write(tmp_path / "pulled.jsonl", rated_rows() + pulled_rows())
    res = export(pulled, fmt, tmp_path / f"{fmt}.jsonl", **options)
    assert res.rows >= 2
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(res.out), split="train")
    assert is_conversational(ds[0]) == conversational and not is_conversational_from_value(ds[0])
    want = {"sft": {"messages"} if conversational else {"prompt", "completion"}, "dpo": {"prompt", "chosen", "rejected"}, "kto": {"prompt", "completion", "label"}}[fmt]
    assert want <= set(ds.column_names)
    loss = _train_one_step(fmt, res.out, tmp_path)
    assert loss == loss and loss > 0  # a real, finite loss
