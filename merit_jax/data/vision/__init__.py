"""Images for the data layer: safe loading, the Qwen2-VL image pipeline, the Qwen2.5-VL chat format
with image tokens, LLaVA and Vision-FLAN readers, and a built-in mixture of handwritten digits."""

from merit_jax.data.tasks import IMAGE_PLACEHOLDER
from merit_jax.data.vision.builtin_digits import TASKS as DIGIT_TASKS
from merit_jax.data.vision.builtin_digits import DigitTaskSpec, describe_digit_tasks, digits_mixture
from merit_jax.data.vision.image_processing import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessingConfig,
    ProcessedImage,
    image_token_count,
    process_example_images,
    process_image,
    smart_resize,
)
from merit_jax.data.vision.images import (
    DEFAULT_MAX_PIXELS_ON_DISK,
    ImageError,
    ImageFile,
    ImagePixels,
    load_image,
    read_image_size,
)
from merit_jax.data.vision.readers import read_llava_conversations, read_vision_flan
from merit_jax.data.vision.template import (
    DEFAULT_SYSTEM_PROMPT,
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    VISION_TOKENS,
    VL_CHAT_TEMPLATE,
    EncodedVLExample,
    EncodedVLPrompt,
    ImageTruncationError,
    encode_vl_example,
    encode_vl_prompt,
    train_vl_tokenizer,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS_ON_DISK",
    "DEFAULT_SYSTEM_PROMPT",
    "DIGIT_TASKS",
    "IMAGE_PAD",
    "IMAGE_PLACEHOLDER",
    "VISION_END",
    "VISION_START",
    "VISION_TOKENS",
    "VL_CHAT_TEMPLATE",
    "DigitTaskSpec",
    "EncodedVLExample",
    "EncodedVLPrompt",
    "ImageError",
    "ImageFile",
    "ImagePixels",
    "ImageProcessingConfig",
    "ImageTruncationError",
    "ProcessedImage",
    "describe_digit_tasks",
    "digits_mixture",
    "encode_vl_example",
    "encode_vl_prompt",
    "image_token_count",
    "load_image",
    "process_example_images",
    "process_image",
    "read_image_size",
    "read_llava_conversations",
    "read_vision_flan",
    "smart_resize",
    "train_vl_tokenizer",
]
