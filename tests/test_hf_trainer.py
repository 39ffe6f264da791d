"""MGLLTrainer end to end on a tiny random CLIPModel: train, evaluate, save, reload (no downloads).

The batches come from ``collate_levels`` with label strings, a label-set level and a level
without labels (None), and without ``text_mask``: the paths the issue found broken.
"""

from __future__ import annotations

import pytest
import torch

from mgll_loss import MGLLLoss
from mgll_loss.targets import LabelSets, labels_from_strings

from . import adapter_models as models

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mgll_loss.adapters import hf  # noqa: E402

CAPTIONS = [
    ["normal", "abnormal", "abnormal", "normal"],
    ["healthy", "mild retinopathy", "severe retinopathy", "healthy"],
    ["no abnormality observed", "microaneurysms only", "drusen", "cup observed"],
]
LABELS = [
    ["Normal", "Abnormal", " abnormal", "Normal"],
    [["Healthy"], ["DR", "Mild"], ["DR", "Severe"], ["Healthy"]],
    None,
]


class _Examples(torch.utils.data.Dataset):
    """Four examples: G=3 captions, labels as a string, a list of strings (a set) and None; no text_mask."""

    def __init__(self) -> None:
        tokens = hf.tokenize_levels(models.hf_tokenizer(), CAPTIONS, padding="max_length", max_length=6)
        pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        self.examples = [
            dict(
                pixel_values=pixels[i],
                input_ids=tokens["input_ids"][:, i],
                attention_mask=tokens["attention_mask"][:, i],
                labels=[LABELS[0][i], LABELS[1][i], None],
            )
            for i in range(4)
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        return self.examples[index]


def test_collate_levels_takes_strings_label_sets_and_none():
    batch = hf.collate_levels(_Examples().examples)
    ids, sets, free_text = batch["labels"]
    torch.testing.assert_close(ids, labels_from_strings(LABELS[0]))
    assert ids[1] != ids[2]  # case-sensitive by default
    assert isinstance(sets, LabelSets) and tuple(sets.shape) == (4, 2) and bool((sets[0] == sets[3]).all())
    assert free_text is None
    mixed = [dict(e, labels=[e["labels"][0], None if i else ["DR"], None]) for i, e in enumerate(_Examples().examples)]
    with pytest.raises(ValueError, match=r"labels\[1\]: examples \[1, 2, 3\] have None and the others a label"):
        hf.collate_levels(mixed)


def test_mgll_trainer_trains_evaluates_saves_and_reloads_a_clip_model(tmp_path):
    from transformers import CLIPModel, TrainingArguments

    torch.manual_seed(0)
    wrapper = hf.MultiGranularHFCLIP(models.tiny_hf_clip())
    before = {k: v.clone() for k, v in wrapper.model.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    loss_fn = MGLLLoss(match="overlap")
    trainer = hf.MGLLTrainer(
        model=wrapper,
        args=args,
        train_dataset=_Examples(),
        eval_dataset=_Examples(),
        data_collator=hf.collate_levels,
        mgll_loss=loss_fn,
    )
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in wrapper.model.state_dict().items())
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    steps = [entry["step"] for entry in evaluations]  # transformers >= 5 also evaluates after the last step
    assert steps in ([2], [2, 3]) and all(e["eval_loss"] > 0 for e in evaluations)

    metrics = trainer.evaluate()
    wrapper.eval()
    batch = hf.collate_levels(_Examples().examples)
    with torch.no_grad():
        expected = hf.compute_mgll_loss(wrapper, batch, loss_fn)
    assert metrics["eval_loss"] == pytest.approx(float(expected), rel=1e-5)

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert (out / "config.json").is_file()
    reloaded = hf.MultiGranularHFCLIP(CLIPModel.from_pretrained(str(out))).eval()
    assert reloaded.model.state_dict().keys() == wrapper.model.state_dict().keys()
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
        features, again = wrapper(**inputs), reloaded(**inputs)
    for name in ("image_features", "text_features", "logit_scale"):
        torch.testing.assert_close(again[name], features[name], rtol=0, atol=0)


def test_mgll_trainer_resumes_from_its_checkpoint(tmp_path):
    from transformers import TrainingArguments

    def trainer_for(max_steps: int) -> hf.MGLLTrainer:
        torch.manual_seed(0)
        args = TrainingArguments(
            output_dir=str(tmp_path / "run"),
            max_steps=max_steps,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=2,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        return hf.MGLLTrainer(
            model=hf.MultiGranularHFCLIP(models.tiny_hf_clip()),
            args=args,
            train_dataset=_Examples(),
            data_collator=hf.collate_levels,
        )

    straight = trainer_for(2)
    straight.train()
    assert (tmp_path / "run" / "checkpoint-2" / "config.json").is_file()
    resumed = trainer_for(2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    for key, value in straight.model.model.state_dict().items():
        torch.testing.assert_close(resumed.model.model.state_dict()[key], value, rtol=0, atol=0)
