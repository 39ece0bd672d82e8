"""Train a compressor with the Hugging Face Trainer, save it, and load it back.

The LLaVA reference model is compressed 4x by PVTC; only vtc's parameters train (`prepare_stage(..., "compressor")`),
on the answer tokens of synthetic samples. The Trainer's output folder holds the vtc checkpoint and a record of the
backbone, which is all `vtc.load_trained` needs. Needs `pip install 'vtc[train]'` (accelerate).

    python examples/train_compressor.py --steps 20 --output out/pvtc
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import TrainingArguments

import vtc
from vtc.tasks import build_prompt, reference_model, synthetic
from vtc.training import VTCCollator, VTCTrainer, prepare_stage, trainable_parameter_names


def logits_of(model, processor, sample) -> torch.Tensor:
    inputs = processor(images=sample.images, text=build_prompt(processor, sample), return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--task", default="grid-readout", choices=vtc.tasks.available())
    parser.add_argument("--output", default=None, help="the output folder (default: a temporary one)")
    args = parser.parse_args(argv)

    model, processor = reference_model("llava")
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    model = prepare_stage(model, "compressor")  # the backbone is frozen
    trainable = trainable_parameter_names(model)
    print(f"trainable tensors: {len(trainable)}, all under vtc_ names: {all('vtc_' in n for n in trainable)}")

    samples = synthetic(args.task, "train", 64)
    with tempfile.TemporaryDirectory() as scratch:
        output = args.output or scratch
        training = TrainingArguments(output_dir=output, max_steps=args.steps, per_device_train_batch_size=4,
                                     learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no",
                                     remove_unused_columns=False, disable_tqdm=True, logging_steps=args.steps)
        # The collator processes each batch with the (patched) processor and labels the answer tokens.
        trainer = VTCTrainer(model=model, args=training, train_dataset=samples, data_collator=VTCCollator(processor))
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        print(f"trained {trainer.state.global_step} steps, loss {losses[-1]:.4f}")

        # The output folder: vtc_config.json, vtc_weights.safetensors and vtc_training.json (the backbone's path).
        loaded, loaded_processor = vtc.load_trained(output)
        sample = synthetic(args.task, "test", 1)[0]
        same = torch.equal(logits_of(model.eval(), processor, sample), logits_of(loaded, loaded_processor, sample))
        print(f"reloaded with vtc.load_trained: {vtc.get_config(loaded).pvtc}; "
              f"logits equal the trained model's: {same}")


if __name__ == "__main__":
    main()
