"""Compress a model, generate with it, read what compression did, and undo it.

Runs on the shipped LLaVA reference model (trained on vtc's synthetic tasks, so its answers mean something):

    python examples/quickstart.py
"""

from __future__ import annotations

import torch

import vtc
from vtc.tasks import build_prompt, reference_model, synthetic


def main() -> None:
    model, processor = reference_model("llava")
    sample = synthetic("majority-colour", "test", 1)[0]

    def ask() -> tuple[str, torch.Tensor]:
        # Process the inputs after vtc.compress: PVTC changes how many placeholders the processor writes per image.
        inputs = processor(images=sample.images, text=build_prompt(processor, sample), return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return answer.strip(), inputs["input_ids"]

    native_answer, native_ids = ask()

    # PVTC: 4x fewer visual tokens from the projector. LVTC: decoder layers 1..2 of the 4 see the visual tokens
    # pooled 4x, restored to full length after layer 2 (restore_layer=-1, the last layer, is the first restored one).
    config = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4),
                           lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1, ratio=4))
    vtc.compress(model, config, processor=processor)
    answer, _ = ask()
    stats = vtc.last_stats(model)  # the last prefill: visual tokens per sample, tokens per decoder layer
    print(f"question: {sample.question}  (reference answer: {sample.answer})")
    print(f"uncompressed: {native_answer!r} with {int((native_ids == model.config.image_token_id).sum())} visual tokens")
    print(f"compressed:   {answer!r} with {stats['visual_tokens'][0]} visual tokens; "
          f"tokens per decoder layer {stats['layer_seq_lens']}")

    vtc.unpatch(model)  # the model and the processor are exactly as they were
    restored, restored_ids = ask()
    assert not vtc.is_compressed(model) and torch.equal(restored_ids, native_ids) and restored == native_answer
    print(f"unpatched:    {restored!r}, the uncompressed answer again")


if __name__ == "__main__":
    main()
