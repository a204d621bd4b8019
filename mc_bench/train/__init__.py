"""Training: the diffusion objective (:mod:`.loss`), a run folder and its configuration (:mod:`.runs`), LoRA and full
fine-tuning (:mod:`.finetune`; its entry point is ``mc_bench.train.finetune.finetune``), generation from held-out
captions (:mod:`.generate`), and the pretraining of the world's zoo (:mod:`.pretrain`)."""

from .runs import FinetuneConfig, build_config, load_finetuned_pipeline, load_run_config

__all__ = ["FinetuneConfig", "build_config", "load_finetuned_pipeline", "load_run_config"]
