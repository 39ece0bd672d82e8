"""`VTCCollator`: labels on exactly the answer tokens and the end-of-sequence token of every row, for random batches.

The property test draws batches of 1..3 samples with 0..2 random-size images each (text-only samples and mixed
batches included), random answers of 1..6 words, and left or right padding, on:

* the tiny LLaVA, Qwen2-VL and InternVL processors (chat templates, word-level tokenizer);
* the shipped LLaVA reference processor (no chat template: the bare `<image>` token path of `build_prompt`) and the
  Qwen2-VL one (chat template), whose answers use the tasks' own vocabulary;
* a Qwen2-VL processor around a byte-level BPE tokenizer trained here (GPT-2 / Qwen style: the space before a word
  belongs to the word's token), whose answers are arbitrary lower-case words.

Each row is checked against the prompt processed alone, so the property does not rest on the collator's own
arithmetic. The processors are compressed with PVTC (ratio 4), and the unpatched copy taken before `compress` is the
teacher processor.
"""

import copy
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vtc
from vtc.api import get_adapter_of
from vtc.tasks import Sample, build_prompt
from vtc.tasks.synthetic import COLOURS
from vtc.testing import build_tiny_model, build_tiny_processor, processor_without_video, tiny_images
from vtc.training import IGNORE_INDEX, VTCCollator

FAMILIES = ("llava", "qwen2_vl", "internvl", "reference:llava", "reference:qwen2_vl", "bpe:qwen2_vl")
QUESTIONS = ("what is in this picture ?", "describe the image .", "Which colour covers most of the image ?")
TASK_WORDS = (*COLOURS, "first", "second")
_QWEN_NAMED_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                      "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}


def bpe_qwen_processor():
    """The tiny Qwen2-VL processor with a byte-level BPE tokenizer (same special tokens and ids) instead of the
    word-level one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = build_tiny_processor("qwen2_vl")
    specials = [base.tokenizer.convert_ids_to_tokens(i) for i in range(13)]  # ids 0..12, as the tiny model's config
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [" ".join(QUESTIONS), " ".join(TASK_WORDS), *(f"w{i} the image {w}" for i, w in enumerate(TASK_WORDS))]
    backend.train_from_iterator(corpus * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", extra_special_tokens=_QWEN_NAMED_TOKENS,
                                        padding_side="left")
    assert [tokenizer.convert_tokens_to_ids(t) for t in specials] == list(range(13))
    processor = processor_without_video(type(base), image_processor=base.image_processor, tokenizer=tokenizer)
    processor.chat_template = base.chat_template
    return processor


class Setup:
    def __init__(self, name):
        kind, _, family = name.rpartition(":")
        if kind == "reference":
            self.model, self.processor = vtc.tasks.reference_model(family)
        else:
            self.model = build_tiny_model(family)
            self.processor = bpe_qwen_processor() if kind == "bpe" else build_tiny_processor(family)
        self.teacher = copy.deepcopy(self.processor)  # before compress: the uncompressed placeholder counts
        vtc.compress(self.model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=self.processor)
        self.image_token_id = get_adapter_of(self.model).image_token_id
        tokenizer = self.processor.tokenizer
        self.bpe = kind == "bpe"
        known = {w for w in tokenizer.get_vocab() if w not in tokenizer.added_tokens_encoder}
        self.task_words = sorted(w for w in TASK_WORDS if w in known)
        self.words = sorted(known)


@functools.cache
def setup(name):
    return Setup(name)


def answers(s):
    if s.bpe:  # a byte-level BPE tokenizer knows every word
        word = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
    else:
        word = st.sampled_from(s.task_words) | st.sampled_from(s.words)
    return st.lists(word, min_size=1, max_size=6).map(" ".join)


@st.composite
def batches(draw, s):
    samples = []
    for index in range(draw(st.integers(1, 3))):
        sizes = draw(st.lists(st.tuples(st.integers(16, 72), st.integers(16, 72)), min_size=0, max_size=2))
        samples.append(Sample(tiny_images(sizes, seed=index), draw(st.sampled_from(QUESTIONS)), draw(answers(s))))
    return samples


def alone(processor, sample):
    """The prompt of one sample processed alone, unpadded: what every row must start with."""
    images = [list(sample.images)] if sample.images else None
    return processor(images=images, text=[build_prompt(processor, sample)], return_tensors="pt")["input_ids"][0]


def check_rows(processor, samples, batch, side):
    tokenizer = processor.tokenizer
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == len(samples)
    answer_ids = []
    for row, sample in enumerate(samples):
        real = mask[row].bool()
        n = int(real.sum())
        # padding on the side asked for, never in the middle
        expected_mask = torch.zeros_like(real)
        if side == "right":
            expected_mask[:n] = True
        else:
            expected_mask[ids.shape[1] - n:] = True
        assert torch.equal(real, expected_mask)
        assert (labels[row][~real] == IGNORE_INDEX).all()
        tokens, row_labels = ids[row][real], labels[row][real]
        prompt = alone(processor, sample)
        assert torch.equal(tokens[:len(prompt)], prompt)  # the row is the prompt, then the labelled answer
        assert (row_labels[:len(prompt)] == IGNORE_INDEX).all()
        answer = tokens[len(prompt):]
        assert torch.equal(row_labels[len(prompt):], answer)
        assert len(answer) >= 2 and int(answer[-1]) == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in answer[:-1].tolist()
        assert answer.tolist() == tokenizer(f" {sample.answer}{tokenizer.eos_token}",
                                            add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(answer[:-1]).split() == sample.answer.split()
        answer_ids.append(answer)
    return answer_ids


@pytest.mark.parametrize("name", FAMILIES)
def test_labels_are_exactly_the_answer_and_eos_tokens(name):
    s = setup(name)

    @settings(max_examples=12, suppress_health_check=[HealthCheck.too_slow])
    @given(samples=batches(s), side=st.sampled_from(["left", "right"]))
    def check(samples, side):
        batch = VTCCollator(s.processor, padding_side=side, teacher_processor=s.teacher)(samples)
        student = check_rows(s.processor, samples, batch, side)
        teacher_batch = batch["teacher_inputs"]
        teacher = check_rows(s.teacher, samples, teacher_batch, side)
        for row, sample in enumerate(samples):
            # the same answer token ids, in the same order, in both sequences
            assert torch.equal(student[row], teacher[row])
            placeholders = int((batch["input_ids"][row] == s.image_token_id).sum())
            teacher_placeholders = int((teacher_batch["input_ids"][row] == s.image_token_id).sum())
            if sample.images:
                assert 0 < placeholders < teacher_placeholders
            else:
                assert placeholders == teacher_placeholders == 0
        flat = batch["input_ids"][batch["labels"] != IGNORE_INDEX]
        teacher_flat = teacher_batch["input_ids"][teacher_batch["labels"] != IGNORE_INDEX]
        assert torch.equal(flat, teacher_flat)
        assert "teacher_inputs" not in teacher_batch

    check()


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_text_only_and_mixed_batches(name):
    s = setup(name)
    text_only = [Sample([], "what is it ?", "red"), Sample([], "describe the image .", "w1 w2 w3")]
    mixed = [text_only[0], Sample(tiny_images([(40, 24), (24, 40)]), "what is it ?", "blue green")]
    for samples in (text_only, mixed):
        batch = VTCCollator(s.processor, teacher_processor=s.teacher)(samples)
        check_rows(s.processor, samples, batch, "right")
        check_rows(s.teacher, samples, batch["teacher_inputs"], "right")
    assert "pixel_values" not in VTCCollator(s.processor)(text_only)


def test_bad_batches_and_settings_are_refused():
    s = setup("llava")
    collator = VTCCollator(s.processor)
    with pytest.raises(vtc.DataError):
        collator([])
    with pytest.raises(vtc.DataError):
        collator([{"images": [], "question": "what is it ?", "answer": "red"}])
    with pytest.raises(vtc.DataError):
        collator([Sample([], "what is it ?", "red"), "red"])
    with pytest.raises(vtc.ConfigError):
        VTCCollator(s.processor, padding_side="middle")
    with pytest.raises(vtc.ConfigError):
        VTCCollator(s.processor, max_length=0)
    with pytest.raises(vtc.DataError):
        VTCCollator(s.processor, max_length=4)([Sample([], "what is in this picture ?", "red blue")])
