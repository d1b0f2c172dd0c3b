"""detectron2's Mask R-CNN R50-FPN as a model family (type ``detectron2``): trained by
detectron2's own trainer and config system, served through the kit's post-processing.

detectron2 is optional: it publishes no wheels, so ``make detectron2 SRC=...`` builds one from
its source (:mod:`tools.detectron2_wheel`). Without it, this package imports, and using the
family raises a :class:`kit.errors.ModelError` saying how to build it.

Modules: ``config`` (the kit YAML -> detectron2 ``CfgNode``), ``data`` (records -> detectron2
datasets), ``model`` (the model folder, ``predict_raw`` -> :class:`kit.postprocess.Detections`),
``train`` (``DefaultTrainer`` with the kit's validation, logs and time budget), ``family``.
"""
