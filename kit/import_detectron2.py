"""Import a detectron2 Mask R-CNN R50-FPN checkpoint as a kit model folder:
``python -m kit.import_detectron2 CHECKPOINT --out MODEL_DIR [--config FILE] [--pixel-mean B G R]
[--pixel-std B G R] [--no-stride-in-1x1]`` (the key map: :mod:`kit.models.maskrcnn.detectron2_keys`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kit.models.maskrcnn.detectron2_keys import D2_DEFAULT_PIXEL_MEAN, D2_DEFAULT_PIXEL_STD, convert


def _main(argv=None) -> int:
    from kit.errors import one_line

    parser = argparse.ArgumentParser(prog="python -m kit.import_detectron2",
                                     description="Import a detectron2 Mask R-CNN R50-FPN checkpoint "
                                                 "as a kit model folder.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="detectron2 .pth (or .pkl) with a 'model' state dict")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--config", type=Path, default=None,
                        help="kit Mask R-CNN YAML (classes, post-processing); default kit/configs/maskrcnn.yaml")
    parser.add_argument("--pixel-mean", type=float, nargs=3, default=None, metavar=("B", "G", "R"),
                        help="detectron2 MODEL.PIXEL_MEAN (BGR, 0-255); default: checkpoint's or "
                             f"{D2_DEFAULT_PIXEL_MEAN}")
    parser.add_argument("--pixel-std", type=float, nargs=3, default=None, metavar=("B", "G", "R"),
                        help=f"detectron2 MODEL.PIXEL_STD; default: checkpoint's or {D2_DEFAULT_PIXEL_STD}")
    parser.add_argument("--no-stride-in-1x1", action="store_true",
                        help="the checkpoint's ResNet strides in the 3x3 conv (RESNETS.STRIDE_IN_1X1: False)")
    args = parser.parse_args(argv)

    import dataclasses

    from kit.models.maskrcnn import MaskRCNNModel, build_network, load_config, read_weights_file

    try:
        cfg = load_config(args.config)
        sd, kind, _ = read_weights_file(args.checkpoint)
        if kind != "detectron2":
            raise ValueError(f"{args.checkpoint}: not a detectron2 checkpoint (no backbone.bottom_up.* keys)")
        converted, rep = convert(sd, num_classes=len(cfg.model.classes), pixel_mean=args.pixel_mean,
                                 pixel_std=args.pixel_std, with_bn_counters=False)
        mcfg = dataclasses.replace(
            cfg.model, norm="frozen_bn", backbone_depth=50, stride_in_1x1=not args.no_stride_in_1x1,
            roi_align_aligned=True, roi_sampling_ratio=0,
            image_mean=tuple(rep.input_mean), image_std=tuple(rep.input_std))
        cfg = dataclasses.replace(cfg, model=mcfg)
        net = build_network(mcfg)
        res = net.load_state_dict(converted, strict=False)
        if res.missing_keys or res.unexpected_keys:
            raise ValueError(f"converted weights do not fit the network: missing {res.missing_keys[:5]}, "
                             f"unexpected {res.unexpected_keys[:5]}")
        MaskRCNNModel(cfg, net, "cpu", extra={"imported_from": str(args.checkpoint),
                                              "conversion": rep.to_dict()}).save(args.out)
    except (ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(rep.consumed)} detectron2 tensors used, {len(rep.skipped)} skipped "
          f"{sorted(rep.skipped)[:5]}; image_mean {rep.input_mean}, image_std {rep.input_std}")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
