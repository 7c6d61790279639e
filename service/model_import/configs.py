"""Preprocessing read from the configuration files that come with published image classifiers:
a Hugging Face `preprocessor_config.json` (an image processor's settings) or a timm `config.json` /
`pretrained_cfg`. Each becomes the same plain dict of card fields (see `Preprocessing`), so that the
importer treats them and its command-line flags alike.

Every key is accounted for: the keys that shape the pictures are read, the keys known to say nothing
about them (names, licences, label lists) are passed over, and any other key is refused by name:
a setting we do not understand could make pictures unlike those the model was trained on.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Pillow's resampling filters by their enum value (PIL.Image.Resampling), as Hugging Face stores `resample`.
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

HF_READ = {
    "data_format", "num_channels", "do_resize", "size", "resample", "do_center_crop", "crop_size", "crop_pct", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb", "default_to_square", "do_flip_channel_order",
}
HF_PASSED_OVER = {
    "feature_extractor_type", "image_processor_type", "processor_class", "_processor_class", "auto_map",
    "do_reduce_labels", "reduce_labels", "input_data_format", "return_tensors", "device",
    "disable_grouping", "_valid_processor_keys", "image_seq_length", "pad_size",
}
# Keys that change the pictures in a way the card cannot express: accepted only at their no-op value.
HF_ONLY_AS = {"do_pad": False, "rescale_offset": False, "include_top": False, "do_split_into_patches": False, "size_divisor": None}
# How transformers' image processors read a bare integer `size` (get_size_dict's default_to_square, per class): most
# that crop afterwards take it as the shorter side (CLIP, ConvNeXt, MobileNet), but DeiT and BEiT resize to a square
# before their crop. A processor not named here is read as the docs page says (the shorter side when it crops).
HF_SQUARE_SIZE = {"vit", "deit", "beit", "data2vecvision"}
HF_SHORTER_SIZE = {"clip", "chineseclip", "bit", "convnext", "mobilenetv1", "mobilenetv2", "mobilevit", "poolformer", "vithybrid", "levit"}
# LeViT resizes the shorter side to int(256 / 224 x size) before its crop (LevitImageProcessor.resize).
HF_SHORTER_FACTOR = {"levit": 256 / 224}
HF_HINTS = {"image_mean", "image_std", "do_normalize", "image_processor_type", "feature_extractor_type", "do_resize", "resample"}

TIMM_TOP = {"architecture", "num_classes", "num_features", "global_pool", "model_args", "pretrained_cfg", "label_names", "label_descriptions"}
TIMM_READ = {"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"}
TIMM_PASSED_OVER = {
    "url", "hf_hub_id", "hf_hub_filename", "hf_hub_revision", "file", "state_dict", "source", "architecture", "tag",
    "custom_load", "test_input_size", "min_input_size", "fixed_input_size", "test_crop_pct", "num_classes",
    "label_offset", "label_names", "label_descriptions", "pool_size", "test_pool_size", "first_conv", "classifier",
    "license", "description", "origin_url", "paper_name", "paper_ids", "notes",
    # what older timm releases wrote beside a flat default_cfg in the hub's config.json
    "num_features", "global_pool", "model_args",
}
TIMM_DEFAULT_CROP_PCT = 0.875
TIMM_DEFAULT_INTERPOLATION = "bicubic"  # timm.data.resolve_data_config's default


class ConfigError(ValueError):
    """The configuration cannot be followed; the message says what is wrong and what is accepted."""


def read_config(document: Any, file_name: str) -> tuple[str, dict]:
    """('huggingface' | 'timm', the card's preprocessing fields) from a parsed configuration file."""
    if not isinstance(document, dict):
        raise ConfigError(f"{file_name} must hold a JSON object (a preprocessor_config.json or a timm config.json)")
    if "pretrained_cfg" in document or "input_size" in document:
        return "timm", timm_preprocessing(document)
    if HF_HINTS & document.keys():
        return "huggingface", hf_preprocessing(document)
    if "id2label" in document or "architectures" in document:
        raise ConfigError(
            f"{file_name} is a Hugging Face model config, which says nothing of preprocessing; pass the model's "
            "preprocessor_config.json instead"
        )
    raise ConfigError(
        f"{file_name} is neither a Hugging Face preprocessor_config.json (image_mean, size, ...) nor a timm config "
        f"(pretrained_cfg or input_size); its keys: {', '.join(sorted(document)) or 'none'}"
    )


def _unknown(keys: set, accepted: set, where: str) -> None:
    if keys:
        raise ConfigError(
            f"unknown {where} keys: {', '.join(sorted(keys))}; the keys understood are {', '.join(sorted(accepted))}"
        )


def _size(value: Any, key: str) -> tuple[int, int] | int:
    """A Hugging Face size: an int, {"height", "width"} or {"shortest_edge"}."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, dict):
        if set(value) == {"height", "width"} and all(isinstance(v, int) and v > 0 for v in value.values()):
            return (value["height"], value["width"])
        if set(value) == {"shortest_edge"} and isinstance(value["shortest_edge"], int) and value["shortest_edge"] > 0:
            return value["shortest_edge"]
    raise ConfigError(f"{key} {value!r} is not accepted; accepted: an integer, {{\"height\": H, \"width\": W}} or {{\"shortest_edge\": S}}")


def _triple(value: Any, key: str) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * 3
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    raise ConfigError(f"{key} {value!r} must be a number or a list of numbers, one per channel")


def hf_preprocessing(config: dict) -> dict:
    """A Hugging Face image processor's settings as card fields. A key saved as null takes the processor's
    default (the fast processors save every setting, unset ones as null)."""
    config = {key: value for key, value in config.items() if value is not None}
    keys = set(config)
    _unknown(keys - HF_READ - HF_PASSED_OVER - set(HF_ONLY_AS), HF_READ | HF_PASSED_OVER | set(HF_ONLY_AS), "preprocessor_config.json")
    for key, harmless in HF_ONLY_AS.items():
        if key in config and config[key] != harmless:
            raise ConfigError(f"{key}: {json.dumps(config[key])} is not supported (the card cannot express it); accepted only as {json.dumps(harmless)}")
    if config.get("do_convert_rgb") is False:
        raise ConfigError("do_convert_rgb: false is not supported; pictures are always converted to RGB (or L)")
    if config.get("do_resize", True) is not True:
        raise ConfigError("do_resize: false is not supported: the server must bring every picture to the model's size")
    if "size" not in config:
        raise ConfigError("the config gives no size; accepted: size as {\"height\", \"width\"}, {\"shortest_edge\"} or an integer")
    # Hugging Face's processors make channels-first RGB (data_format), and its center_crop floors an odd margin.
    layout = {"channels_first": "NCHW", "channels_last": "NHWC"}.get(config.get("data_format", "channels_first"))
    if layout is None:
        raise ConfigError(f"data_format {config['data_format']!r} is not accepted; accepted: channels_first, channels_last")
    # The layout and channels are hints: the graph's own dimensions decide where they can (an export may be NHWC).
    fields: dict[str, Any] = {"crop_rounding": "floor", "layout_hint": layout, "channels_hint": config.get("num_channels", 3)}
    resample = config.get("resample", 2)
    if resample not in PIL_FILTERS:
        raise ConfigError(f"resample {resample!r} is not a Pillow filter; accepted: {', '.join(f'{k} ({v})' for k, v in PIL_FILTERS.items())}")
    fields["interpolation"] = PIL_FILTERS[resample]
    size = _size(config["size"], "size")
    crop_pct = config.get("crop_pct")
    center_crop = config.get("do_center_crop", False)
    processor = processor_family(config)
    if isinstance(size, int) and not isinstance(config["size"], dict):
        # A bare integer: as the processor's class reads it; for a class not known here, the shorter side for
        # processors that crop afterwards, a square otherwise; default_to_square, when saved, says which.
        if processor in HF_SQUARE_SIZE or processor in HF_SHORTER_SIZE:
            square = processor in HF_SQUARE_SIZE
        else:
            square = not (center_crop or crop_pct is not None)
        square = config.get("default_to_square", square)
        size = (size, size) if square else size
    factor = HF_SHORTER_FACTOR.get(processor, 1.0)
    if factor != 1.0 and isinstance(size, int) and crop_pct is not None:
        raise ConfigError(f"crop_pct with a {processor} processor's shortest_edge is not supported; accepted: its own rule without crop_pct")
    if crop_pct is not None and not (isinstance(crop_pct, (int, float)) and 0 < crop_pct <= 1):
        raise ConfigError(f"crop_pct {crop_pct!r} must be a number in (0, 1]")
    if center_crop:
        crop = _size(config.get("crop_size", size if not isinstance(size, int) else {"height": size, "width": size}), "crop_size")
        crop = (crop, crop) if isinstance(crop, int) else crop
        fields.update(method="resize-crop", size=list(crop))
        if isinstance(size, int):
            fields["resize_shorter"] = int(size / crop_pct) if crop_pct else int(factor * size)
        else:
            fields["resize_size"] = [int(size[0] / crop_pct), int(size[1] / crop_pct)] if crop_pct else list(size)
    elif crop_pct is not None and isinstance(size, int):
        # ConvNeXt's rule: below 384, the shorter side goes to size / crop_pct and the centre size x size is kept.
        if size < 384:
            fields.update(method="resize-crop", size=[size, size], resize_shorter=int(size / crop_pct))
        else:
            fields.update(method="resize", size=[size, size])
    elif isinstance(size, int):
        raise ConfigError("size.shortest_edge without a centre crop makes pictures of varying size; give do_center_crop and crop_size")
    else:
        fields.update(method="resize", size=list(size))
    if config.get("do_rescale", True):
        factor = config.get("rescale_factor", 1 / 255)
        if not isinstance(factor, (int, float)) or factor <= 0:
            raise ConfigError(f"rescale_factor {factor!r} must be a positive number")
        fields["range"] = [0.0, 255.0 * factor]
    else:
        fields["range"] = [0.0, 255.0]
    # A processor without normalisation (MobileViT) saves neither do_normalize nor a mean: none is applied.
    if config.get("do_normalize", "image_mean" in config or "image_std" in config):
        if "image_mean" not in config or "image_std" not in config:
            raise ConfigError("do_normalize is on but image_mean or image_std is missing; give both")
        fields["mean"], fields["std"] = _triple(config["image_mean"], "image_mean"), _triple(config["image_std"], "image_std")
    if config.get("do_flip_channel_order"):
        fields["color_order"] = "BGR"
        for key in ("mean", "std"):
            if key in fields:
                fields[key] = fields[key][::-1]
    return fields


def processor_family(config: dict) -> str | None:
    """The image processor's class without its suffix, lower case ("DeiTFeatureExtractor" -> "deit"), or None."""
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    if not isinstance(name, str):
        return None
    for suffix in ("ImageProcessorFast", "ImageProcessor", "FeatureExtractor"):
        name = name.removesuffix(suffix)
    return name.lower()


def timm_preprocessing(document: dict) -> dict:
    """timm's pretrained_cfg (alone, or inside a config.json) as card fields: timm's eval transform."""
    if "pretrained_cfg" in document:
        _unknown(set(document) - TIMM_TOP, TIMM_TOP, "timm config.json")
        config = document["pretrained_cfg"]
        if not isinstance(config, dict):
            raise ConfigError("pretrained_cfg must be a JSON object")
    else:
        config = document
    _unknown(set(config) - TIMM_READ - TIMM_PASSED_OVER, TIMM_READ | TIMM_PASSED_OVER, "timm pretrained_cfg")
    input_size = config.get("input_size")
    if not (isinstance(input_size, list) and len(input_size) == 3 and all(isinstance(v, int) and v > 0 for v in input_size)):
        raise ConfigError(f"input_size {input_size!r} must be [channels, height, width]")
    channels, height, width = input_size
    interpolation = config.get("interpolation") or TIMM_DEFAULT_INTERPOLATION
    if interpolation not in PIL_FILTERS.values():
        raise ConfigError(f"interpolation {interpolation!r} is not accepted; accepted: {', '.join(PIL_FILTERS.values())}")
    crop_pct = config.get("crop_pct") or TIMM_DEFAULT_CROP_PCT
    if not (isinstance(crop_pct, (int, float)) and 0 < crop_pct <= 1):
        raise ConfigError(f"crop_pct {crop_pct!r} must be a number in (0, 1]")
    crop_mode = config.get("crop_mode") or "center"
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    fields: dict[str, Any] = {"layout_hint": "NCHW", "channels": channels, "size": [height, width], "interpolation": interpolation,
                              "method": "resize-crop"}  # timm's models take channels-first tensors
    if crop_mode == "center":
        if height != width:
            raise ConfigError(f"crop_mode 'center' with a non-square input {height}x{width} is not supported; accepted: square inputs, or crop_mode 'squash'")
        fields["resize_shorter"] = scale[0]
    elif crop_mode == "squash":
        fields["resize_size"] = list(scale)
    else:
        raise ConfigError(f"crop_mode {crop_mode!r} is not supported; accepted: center, squash")
    fields["range"] = [0.0, 1.0]
    fields["mean"] = _triple(config.get("mean", IMAGENET_MEAN), "mean")[:channels]
    fields["std"] = _triple(config.get("std", IMAGENET_STD), "std")[:channels]
    return fields
