"""What each configuration field is, for docs/configuration.md, where the field's source
(its pydantic `description`, the docstring under it, its `#` comment) does not say; a
source comment that adds a condition or a note follows this text in the page
(bench/docs_pages.py). Keys are dotted as on the command line (`augment.gamma`);
tests/unit/test_docs.py holds that each is still a field.
"""

from __future__ import annotations

MEANINGS: dict[str, str] = {
    "dataset": "The data set's name under `raw/` and `prepared/` in the store.",
    "image_size": "The side, in pixels, of the square images the model trains and predicts "
    "on (the prepared cache is made at this size).",
    "n_folds": "How many stratified folds the training patients are split into; one model "
    "per fold.",
    "seed": "Seeds the folds, the model's initialisation, the data order and augmentation.",
    "preset": "The preset this configuration started from (set with `--preset`).",
    "backbone": "The ResNet under the feature pyramid.",
    "pretrained": "Start the backbone (and for ResNet-50 the whole RetinaNet) from "
    "torchvision's published weights.",
    "weights_path": "A weights file on the training machine, looked at before the store and "
    "torch's hub cache.",
    "conv1_init": "How the one-channel first convolution starts: the pretrained RGB kernels "
    "summed, or random.",
    "fpn_channels": "Channels of the feature pyramid and the heads.",
    "freeze_bn": "Keep the backbone's batch-norm statistics and affine parameters fixed.",
    "trainable_backbone_layers": "How many of the backbone's five stages train (5 = all), "
    "as torchvision counts them.",
    "head_groupnorm": "GroupNorm in the classification and box heads (torchvision's "
    "RetinaNet v2 head).",
    "focal_alpha": "The focal loss's weight of the positive class.",
    "focal_gamma": "The focal loss's focusing exponent.",
    "box_loss": "The box regression loss.",
    "epochs": "Epochs per fold.",
    "batch_size": "Training images per step.",
    "optimizer": "The optimizer.",
    "lr": "The peak learning rate.",
    "weight_decay": "Weight decay (decoupled with `adamw`).",
    "warmup_epochs": "Epochs of linear learning-rate warm-up from zero.",
    "scheduler": "The learning-rate schedule after warm-up: cosine decay, or a reduction "
    "when the validation box loss stops improving.",
    "plateau_patience": "`plateau`: validations without improvement before the rate drops.",
    "plateau_factor": "`plateau`: the factor the rate is multiplied by.",
    "grad_clip": "The largest gradient norm, clipped to (none: no clipping).",
    "val_every": "Validate every this many epochs (and always after the last); only "
    "validated epochs can be a fold's best checkpoint.",
    "tta_hflip": "Predict each image and its mirror image, and fuse the two.",
    "augment.enabled": "Augment the training images at all.",
    "augment.hflip_p": "Probability of a horizontal flip.",
    "augment.scale": "Zoom half-width.",
    "augment.rotation_deg": "Rotation half-width, in degrees.",
    "augment.shear_deg": "Shear half-width, in degrees.",
    "augment.shift": "Shift half-width, a fraction of the image size.",
    "augment.gamma": "Gamma half-width.",
    "augment.blur_sigma": "The largest Gaussian blur sigma, in pixels.",
    "augment.blur_p": "Probability of a blur.",
    "augment.noise_std": "The largest standard deviation of additive Gaussian noise, in grey "
    "levels.",
    "augment.noise_p": "Probability of noise.",
    "augment.salt_pepper": "The share of pixels coarse salt and pepper replaces.",
    "augment.salt_pepper_size_min": "Salt and pepper is drawn on a coarse mask this fraction "
    "of the image's size at least (imgaug's `size_percent`: smaller, coarser grains).",
    "augment.salt_pepper_size_max": "The coarse mask's largest size, a fraction of the image's.",
    "augment.salt_pepper_p": "Probability of salt and pepper.",
    "augment.min_box_size": "Boxes narrower or lower than this, in cache pixels, are dropped.",
    "augment.min_visible": "Boxes keeping less than this share of their area inside the image "
    "are dropped.",
    "postprocess.score_threshold": "Boxes scoring below this are not submitted (tuned out of fold "
    "when `tune`).",
    "postprocess.max_boxes": "The most boxes kept per image (tuned when `tune`).",
    "postprocess.fusion": "How prediction sets of one image (fold models, flip TTA) are "
    "merged: weighted box fusion, NMS, or none.",
    "postprocess.fusion_iou": "The overlap at which boxes of different sets are fused.",
    "postprocess.tune": "Tune the score threshold and box count on the out-of-fold predictions.",
    "postprocess.tune_shrink": "Tune the shrink too.",
    "postprocess.tune_gate": "Tune the gate too.",
    "execution.amp": "CUDA only.",
    "execution.channels_last": "CUDA only: the channels-last memory format.",
    "execution.torch_compile": "CUDA only.",
    "execution.device": "Where folds train and predict.",
    "postprocess.shrink": "Each box's width and height are scaled by this around its centre (tuned "
    "when `tune_shrink`).",
}
