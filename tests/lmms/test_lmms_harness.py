"""`python -m lmms_eval --model vtc` on vtc's own tasks, offline, for real: the scores equal `vtc.evaluate`'s on the
same samples (uncompressed and compressed), a multiple-choice task goes through `loglikelihood`, each request's
visual tokens and prefill FLOPs are logged, and a bad `--model_args` is one clear error.

These tests need lmms-eval. The main test environment does not install it (its declared dependencies include a
torchvision built for the CUDA torch); `.ci/lmms.sh` (run by `.ci/run`) makes an environment that has it and runs
this folder there.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from lmms_references import choice_accuracy

import vtc
import vtc.tasks
from vtc.lmms.write_tasks import TASK_FILES, lmms_task_name, write_tasks

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is not installed here; .ci/run runs tests/lmms in an "
                                                    "environment that has it (.ci/lmms.sh)")

FAMILY, LIMIT, BATCH_SIZE = "llava", 32, 8
CONFIGS = {
    "uncompressed": None,
    "pvtc-r4": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)),
    "lvtc-r4": vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1, ratio=4)),
}
GENERATION_TASKS = ("majority-colour", "grid-readout")  # coarse (survives pooling) and fine (does not)
CHOICE_TASK = "majority-colour"

pytestmark = pytest.mark.skipif(FAMILY not in vtc.tasks.reference_families(), reason=f"no reference {FAMILY} model")


def max_new_tokens(task: str) -> int:
    """The answer length the shipped YAML gives the task (what `vtc.evaluate` is given too)."""
    return int(re.search(r"max_new_tokens: (\d+)", (TASK_FILES / f"{lmms_task_name(task)}.yaml").read_text())[1])


def reference(config):
    model, processor = vtc.tasks.reference_model(FAMILY)
    if config is not None:
        vtc.compress(model, config, processor=processor)
    return model, processor


def offline(cache) -> dict[str, str]:
    """Nothing downloaded; the datasets lmms-eval prepares are cached under `cache`."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache),
            "LMMS_EVAL_DATASETS_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lmms-tasks"), size=LIMIT)


def run_lmms_eval(task_folder, out, model_args, tasks) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lmms_eval", "--model", "vtc", "--model_args", model_args,
               "--tasks", ",".join(tasks), "--include_path", str(task_folder), "--limit", str(LIMIT),
               "--output_path", str(out), "--log_samples"]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, **offline(out / "datasets")})


@pytest.fixture(scope="module")
def command_line_runs(task_folder, tmp_path_factory):
    """`run(name)`: one `python -m lmms_eval` run per configuration (made once): its results, its logged samples
    per task, and its `stats=` file."""
    done = {}

    def run(name):
        if name not in done:
            out = tmp_path_factory.mktemp(f"lmms-{name}")
            model_args = f"pretrained=reference:{FAMILY},batch_size={BATCH_SIZE},stats={out / 'stats.jsonl'}"
            if CONFIGS[name] is not None:
                CONFIGS[name].save(out / "config.json")
                model_args += f",config={out / 'config.json'}"
            tasks = [lmms_task_name(task) for task in GENERATION_TASKS] + [lmms_task_name(CHOICE_TASK, choice=True)]
            process = run_lmms_eval(task_folder, out, model_args, tasks)
            results = sorted(out.rglob("*_results.json"))
            # lmms-eval exits with 0 when a run fails: the results file says whether it finished
            assert results, f"lmms-eval wrote no results:\n{process.stdout[-4000:]}\n{process.stderr[-4000:]}"
            samples = {task: [json.loads(line) for line in path.read_text().splitlines()]
                       for task in tasks for path in out.rglob(f"*_samples_{task}.jsonl")}
            stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
            done[name] = json.loads(results[0].read_text()), samples, stats
        return done[name]

    return run


@pytest.mark.parametrize("name", ["uncompressed", "pvtc-r4"])
def test_the_command_line_scores_equal_vtc_evaluate_on_the_same_samples(command_line_runs, name):
    results, samples, stats = command_line_runs(name)
    model, processor = reference(CONFIGS[name])
    for task in GENERATION_TASKS:
        lmms_task = lmms_task_name(task)
        expected = vtc.evaluate(model, processor, vtc.tasks.synthetic(task, "test", LIMIT, 0), batch_size=BATCH_SIZE,
                                max_new_tokens=max_new_tokens(task), progress=False)
        assert results["results"][lmms_task]["accuracy,none"] == expected.accuracy
        logged = sorted(samples[lmms_task], key=lambda sample: sample["doc_id"])
        assert [sample["filtered_resps"] for sample in logged] == [o.prediction for o in expected.per_sample]
        counts = [sample["token_counts"][0] for sample in logged]
        task_stats = [record for record in stats if record["task"] == lmms_task]
        for per_request in (counts, task_stats):
            assert len(per_request) == LIMIT
            assert sum(r["visual_tokens"] for r in per_request) / LIMIT == expected.visual_tokens
            assert sum(r["prefill_flops"] for r in per_request) / LIMIT == pytest.approx(expected.prefill_flops)
        assert expected.visual_tokens == (36 if CONFIGS[name] is None else 9)  # one token per cell, or per 2x2


@pytest.mark.parametrize("name", ["uncompressed", "pvtc-r4"])
def test_a_multiple_choice_task_goes_through_loglikelihood(command_line_runs, name):
    results, samples, stats = command_line_runs(name)
    model, processor = reference(CONFIGS[name])
    task = lmms_task_name(CHOICE_TASK, choice=True)
    expected = choice_accuracy(model, processor, vtc.tasks.synthetic(CHOICE_TASK, "test", LIMIT, 0))
    assert results["results"][task]["acc,none"] == expected
    choices = len(vtc.tasks.synthetic(CHOICE_TASK, size=1)[0].choices)
    requests = [record for record in stats if record["task"] == task]
    assert len(requests) == LIMIT * choices and {r["request"] for r in requests} == {"loglikelihood"}
    assert all(len(sample["filtered_resps"]) == choices for sample in samples[task])


def test_a_loaded_model_runs_through_simple_evaluate_and_stays_its_owner_s(task_folder, tmp_path, monkeypatch):
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    from vtc.lmms.model import VTCModel

    for key, value in offline(tmp_path / "datasets").items():
        monkeypatch.setenv(key, value)
    model, processor = vtc.tasks.reference_model(FAMILY)
    lm = VTCModel.from_model(model, processor, config=CONFIGS["lvtc-r4"], batch_size=BATCH_SIZE)
    task = "grid-readout"
    results = evaluator.simple_evaluate(model=lm, tasks=[lmms_task_name(task)], limit=LIMIT,
                                        task_manager=TaskManager("WARNING", include_path=str(task_folder)))
    expected = vtc.evaluate(model, processor, vtc.tasks.synthetic(task, "test", LIMIT, 0), batch_size=BATCH_SIZE,
                            max_new_tokens=max_new_tokens(task), progress=False)
    assert results["results"][lmms_task_name(task)]["accuracy,none"] == expected.accuracy
    logged = sorted(results["samples"][lmms_task_name(task)], key=lambda sample: sample["doc_id"])
    assert [sample["filtered_resps"][0] for sample in logged] == [o.prediction for o in expected.per_sample]
    costs = lm.costs()[lmms_task_name(task)]
    assert costs["documents"] == LIMIT and costs["visual_tokens"] == expected.visual_tokens
    assert costs["prefill_flops"] == pytest.approx(expected.prefill_flops)
    assert lm.model is model and vtc.is_compressed(model)  # lmms-eval's clean() left the caller's model alone


def test_a_trained_run_folder_is_a_model(task_folder, tmp_path, monkeypatch):
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    from vtc.lmms.model import VTCModel
    from vtc.training.trained import write_training_record

    for key, value in offline(tmp_path / "datasets").items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    model, processor = reference(CONFIGS["pvtc-r4"])
    vtc.save_pretrained(model, run)
    write_training_record(run, base_model=f"reference:{FAMILY}", stage="compressor", steps=0)
    lm = VTCModel(trained=str(run), batch_size=BATCH_SIZE)
    task = "majority-colour"
    results = evaluator.simple_evaluate(model=lm, tasks=[lmms_task_name(task)], limit=LIMIT,
                                        task_manager=TaskManager("WARNING", include_path=str(task_folder)))
    trained, trained_processor = vtc.load_trained(run)
    expected = vtc.evaluate(trained, trained_processor, vtc.tasks.synthetic(task, "test", LIMIT, 0),
                            batch_size=BATCH_SIZE, max_new_tokens=max_new_tokens(task), progress=False)
    assert results["results"][lmms_task_name(task)]["accuracy,none"] == expected.accuracy
    assert lm.costs()[lmms_task_name(task)]["visual_tokens"] == expected.visual_tokens == 9


@pytest.mark.parametrize("model_args, message", [
    (f"pretrained=reference:{FAMILY},ratio=4", "model_args='ratio=4' is invalid: expected a key among pretrained"),
    (f"pretrained=reference:{FAMILY},config=missing.json", "config='missing.json' is invalid"),
], ids=["unknown-key", "missing-config"])
def test_a_bad_model_argument_is_one_clear_error_before_anything_loads(task_folder, tmp_path, model_args, message):
    process = run_lmms_eval(task_folder, tmp_path, model_args, [lmms_task_name("majority-colour")])
    output = process.stdout + process.stderr
    # lmms-eval prints the exception's traceback, then its own error line with the message
    assert f"vtc.errors.ConfigError: {message}" in output and f"Error during evaluation: {message}" in output
    assert len(re.findall(r"^\w+(\.\w+)*(Error|Exception): ", output, flags=re.M)) == 1  # no other error
    assert "Loading weights" not in output and not list(tmp_path.rglob("*_results.json"))
