"""vtc in lmms-eval: model id `vtc` and tasks over vtc's synthetic samples (`pip install "vtc[lmms]"`; docs/lmms.md).

    python -m vtc.lmms.write_tasks lmms_tasks/
    python -m lmms_eval --model vtc --model_args pretrained=FOLDER,config=cfg.json \\
        --tasks vtc_majority_colour --include_path lmms_tasks/

* `manifest`: the entry point of group `lmms_eval.models` that registers model id `vtc`;
* `model`: `VTCModel`, the lmms-eval model (imports lmms_eval);
* `options`: its `--model_args`, checked before anything loads;
* `generation`: a task's generation kwargs as `generate` keywords and stop strings;
* `scoring`: continuation log-likelihoods, for multiple-choice tasks;
* `write_tasks`: copies the shipped task YAMLs (`tasks/`) into a folder and writes their data beside them;
* `task_functions`: the functions those YAMLs name.

Importing this package imports neither lmms_eval nor the model class.
"""
