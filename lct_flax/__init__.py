"""lct-flax: Linear Context Transform (LCT) blocks and channel-attention ResNets in JAX/Flax.

Where things live (data flows config -> data + model -> loop -> checkpoints -> export -> evaluate):

Models (no training code; usable alone in a notebook)
  attention         LCT (eqs. 2-5), SE, SE+; blocks: each registered once by name (add one there)
  layers, models    BatchNorm and initialisers; ResNet-18..152 v1.5 with a block in every unit
  model_specs       a classifier's and a detector's settings: their config rules, identity, export
                    section and module derive from them
  flops             parameter and multiply-add counts (Table 1)
  interop           torchvision/timm state dicts in and out
Tasks (`tasks`: the registry; one module per task implementing `tasks.base.Task`, registered
with the module of its config keys' rules)
  tasks.classification    Tables 1-5; its pure pieces in classifier_steps, classifier_evaluation;
                          its config keys in classifier_rules
  tasks.detection         Tables 6-7; the detector, its ops, COCO data and evaluation in detection/
                          (its config keys: detection/config_rules; a new box or mask head:
                          detection/head_registry)
Training (what every task's run shares)
  loop              the loop: checkpoints, exact resume, preemption, NaN guard, logs, evaluation
  train_state       the state and the one optimizer step, given a task's loss
  optimization      SGD and the learning-rate schedules of the paper
  finetuning, pretrained, freezing    init_from and frozen stages (supplied by the tasks)
  checkpointing, preemption, workdir_lock, parallel, profiling, fileio    run safety and devices
  tensorboard_log   the run's scalars as TensorBoard event files
Data
  input_pipeline, resampling, pixels, dataset_defaults    tfds input of the classifiers
  datasets/         our tfds builders (digits, COCO layout, generated COCO and ImageNet files)
Exports and analysis
  export_format     the files of an export (no task knowledge); export: the command and load
  evaluate          an export on a split, as its task evaluates; analysis: Figs. 1, 3, 4
Accelerators, without them
  plan              `python -m lct_flax.plan`: a config's steps compiled for absent GPUs and TPUs
  deviceless, accelerators, hlo_stats    the compiles, the targets' figures, compiled HLO read
Command-line support: cli, config_schema (every config key's type and range; schema_rules),
quiet_tensorflow.
"""
