"""Host-side (NumPy) preparation of Qwen2.5-VL inputs: vision layout, M-RoPE positions and fixed-shape batches.

Everything that depends on the image sizes is computed here, outside jit, as arrays whose shapes
depend only on the padded patch count and the batch shape, so one compiled program serves every
batch of those shapes.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from merit_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, VisionConfig

Batch = dict[str, np.ndarray | dict[str, np.ndarray]]


def _as_grid(image_grid_thw) -> np.ndarray:
    grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    if np.any(grid < 1):
        raise ValueError(f"image_grid_thw has a non-positive entry: {grid.tolist()}")
    return grid


def _check_grid(grid: np.ndarray, vision: VisionConfig) -> None:
    merge = vision.spatial_merge_size
    uneven = [row.tolist() for row in grid if row[1] % merge or row[2] % merge]
    if uneven:
        raise ValueError(
            f"image grids {uneven} have a height or width (in patches) not divisible by "
            f"spatial_merge_size={merge}; resize images to multiples of "
            f"{merge * vision.patch_size} pixels, as Qwen2VLImageProcessor does"
        )


def vision_layout(
    image_grid_thw, config: Qwen2_5_VLConfig | VisionConfig, num_patches_padded: int
) -> dict[str, np.ndarray]:
    """Compute the arrays the jitted vision encoder needs for these images, padded to num_patches_padded.

    image_grid_thw: int (n_images, 3), the (t, h, w) patch grid of each image, in the order of
    their patches in `pixel_values` and of their tokens in the batch. With N = num_patches_padded
    and M = N / spatial_merge_size^2, returns:
      window_order (N,) int32: the patch to read at each position of the window order. In that
        order the patches of one attention window are contiguous, as in transformers'
        get_vision_window_index.
      window_segment_ids, image_segment_ids (N,) int32: in window order, the window and the frame
        (image) of each patch, or -1 for padding. Attention connects patches with equal ids.
      rotary_ids (N, 2) int32: in window order, each patch's (row, column) in its image.
      feature_order (M,) int32: the merged feature (window order) to read for each LLM token
        slot, which puts the features in image order.
      feature_mask (M,) bool: True for the slots of real features, which come first.
    """
    vision = config.vision_config if isinstance(config, Qwen2_5_VLConfig) else config
    grid = _as_grid(image_grid_thw)
    _check_grid(grid, vision)
    merge, unit = vision.spatial_merge_size, vision.merge_unit
    window = vision.window_merged_patches

    total = int(np.sum(np.prod(grid, axis=1)))
    if num_patches_padded % unit:
        raise ValueError(
            f"num_patches_padded={num_patches_padded} must be a multiple of spatial_merge_size^2={unit}"
        )
    if total > num_patches_padded:
        raise ValueError(
            f"the images have {total} patches in all (grids {grid.tolist()}), more than "
            f"num_patches_padded={num_patches_padded}; raise the patch budget or use fewer or smaller images"
        )

    # The window id and frame id of each merged patch (group of `unit` patches), in input order.
    # Windows never span two frames or two images.
    unit_window, unit_frame, rotary = [], [], []
    window_count = frame_count = 0
    for t, h, w in grid.tolist():
        rows, cols = h // merge, w // merge
        windows_down, windows_across = -(-rows // window), -(-cols // window)
        row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        in_frame = (row // window) * windows_across + col // window
        frame_offsets = np.arange(t)[:, None] * windows_down * windows_across
        unit_window.append((window_count + frame_offsets + in_frame.reshape(1, -1)).reshape(-1))
        unit_frame.append(np.repeat(frame_count + np.arange(t), rows * cols))
        window_count += t * windows_down * windows_across
        frame_count += t

        # Patches arrive grouped by merged patch (each merge x merge block is contiguous), so a
        # patch's (row, column) is laid out block by block.
        patch_row, patch_col = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        blocks = (rows, merge, cols, merge)
        patch_row = patch_row.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
        patch_col = patch_col.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
        rotary.append(np.tile(np.stack([patch_row, patch_col], axis=-1), (t, 1)))

    num_units = num_patches_padded // unit
    real_units = total // unit
    unit_window = np.concatenate(unit_window) if unit_window else np.zeros(0, np.int64)
    unit_frame = np.concatenate(unit_frame) if unit_frame else np.zeros(0, np.int64)

    # A stable sort by window keeps row-major order inside each window, which is the order
    # transformers gives. The padding units stay at the end.
    unit_order = np.concatenate([np.argsort(unit_window, kind="stable"), np.arange(real_units, num_units)])
    window_order = (unit_order[:, None] * unit + np.arange(unit)).reshape(-1)

    padding = np.full(num_units - real_units, -1, np.int64)
    window_ids = np.concatenate([unit_window, padding])[unit_order]
    frame_ids = np.concatenate([unit_frame, padding])[unit_order]
    rotary_ids = np.zeros((num_patches_padded, 2), np.int64)
    if rotary:
        rotary_ids[:total] = np.concatenate(rotary)

    return {
        "window_order": window_order.astype(np.int32),
        "window_segment_ids": np.repeat(window_ids, unit).astype(np.int32),
        "image_segment_ids": np.repeat(frame_ids, unit).astype(np.int32),
        "rotary_ids": rotary_ids[window_order].astype(np.int32),
        "feature_order": np.argsort(unit_order).astype(np.int32),
        "feature_mask": np.arange(num_units) < real_units,
    }


def rope_index(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    image_grid_thw: Sequence,
    config: Qwen2_5_VLConfig,
) -> np.ndarray:
    """Compute multimodal RoPE positions int32 (3, B, L), as transformers' get_rope_index does for images.

    image_grid_thw[b]: int (n_images_b, 3), the grids of row b's images in order. A text token
    gets the same temporal, height and width position, one more than the token before it (or than
    the maximum position of the image before it). The tokens of an image with merged grid
    (t, h', w') starting at position s get (s + i, s + j, s + k). Padding gets 0.

    Raises ValueError when a row's image tokens do not form one run of t * h' * w' tokens per grid.
    NOTE: two images with no token between them are split by their grids here, but
    transformers 5.25 would treat the joint run as one image. The Qwen2.5-VL chat template puts
    vision_start and vision_end tokens around each image, so real prompts never have such runs.
    """
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    mask = np.ones((batch, length), bool) if attention_mask is None else np.asarray(attention_mask) > 0
    if len(image_grid_thw) != batch:
        raise ValueError(f"image_grid_thw has {len(image_grid_thw)} rows of grids but input_ids has {batch} rows")
    merge = config.vision_config.spatial_merge_size

    positions = np.zeros((3, batch, length), np.int64)
    for b in range(batch):
        real = np.flatnonzero(mask[b])
        tokens = input_ids[b, real]
        if np.any(tokens == config.video_token_id):
            raise ValueError(
                f"row {b} contains video tokens (id {config.video_token_id}); videos are not supported"
            )
        grids = _as_grid(image_grid_thw[b])
        _check_grid(grids, config.vision_config)
        row_positions = np.zeros((3, len(tokens)), np.int64)
        is_image = tokens == config.image_token_id
        next_position = next_grid = i = 0

        while i < len(tokens):
            if not is_image[i]:
                stop = i + 1
                while stop < len(tokens) and not is_image[stop]:
                    stop += 1
                row_positions[:, i:stop] = next_position + np.arange(stop - i)
                next_position += stop - i
                i = stop
                continue

            if next_grid == len(grids):
                raise ValueError(
                    f"row {b} has more image tokens than its {len(grids)} image grid(s) account for "
                    f"(first extra one at real token {i})"
                )
            t, h, w = grids[next_grid].tolist()
            count = t * (h // merge) * (w // merge)
            run = is_image[i : i + count]
            if len(run) < count or not run.all():
                found = len(run) if run.all() else int(np.argmin(run))
                raise ValueError(
                    f"row {b}: image {next_grid} with grid {[t, h, w]} needs {count} consecutive "
                    f"image tokens from real token {i}, found {found}"
                )
            frame, down, across = np.meshgrid(
                np.arange(t), np.arange(h // merge), np.arange(w // merge), indexing="ij"
            )
            row_positions[:, i : i + count] = next_position + np.stack(
                [frame.reshape(-1), down.reshape(-1), across.reshape(-1)]
            )
            next_position += max(h, w) // merge
            next_grid += 1
            i += count

        if next_grid != len(grids):
            raise ValueError(
                f"row {b} has image tokens for {next_grid} image(s) but {len(grids)} grid(s); "
                "every image needs t * (h / merge) * (w / merge) image tokens in the text"
            )
        positions[:, b, real] = row_positions
    return positions.astype(np.int32)


def collate_vl_batch(
    examples: Sequence[Mapping[str, np.ndarray]],
    *,
    batch_size: int,
    seq_len: int,
    max_patches: int,
    config: Qwen2_5_VLConfig,
    pad_id: int,
) -> Batch:
    """Build one right-padded training batch of fixed shape from up to batch_size examples.

    Each example has `input_ids` int32 (L,), `loss_mask` bool (L,), `pixel_values` float32
    (n, C*T*P*P) and `image_grid_thw` int (n_images, 3). A text-only example may omit the last
    two. Returns a dict with
      input_ids, targets, attention_mask: int32 (B, seq_len);
      loss_mask: float32 (B, seq_len), on the targets as in merit_jax.data.batching;
      positions: int32 (3, B, seq_len), from rope_index;
      pixel_values: float32 (max_patches, C*T*P*P), the patches of all rows' images in row order;
      vision: the vision_layout dict of those images for max_patches.
    """
    vision = config.vision_config
    # No example at all is allowed: it is the all-padding micro-batch that fills a stacked batch.
    if len(examples) > batch_size:
        raise ValueError(f"got {len(examples)} examples for a batch of batch_size={batch_size}; pass at most {batch_size}")

    input_ids = np.full((batch_size, seq_len), pad_id, np.int32)
    targets = np.full((batch_size, seq_len), pad_id, np.int32)
    loss_mask = np.zeros((batch_size, seq_len), np.float32)
    attention_mask = np.zeros((batch_size, seq_len), np.int32)
    pixel_values = np.zeros((max_patches, vision.patch_dim), np.float32)
    grids_per_row = [np.zeros((0, 3), np.int64) for _ in range(batch_size)]
    patch_counts = []

    patch_offset = 0
    for row, example in enumerate(examples):
        ids = np.asarray(example["input_ids"], np.int32)
        count = len(ids)
        if count > seq_len:
            raise ValueError(
                f"example {row} has {count} tokens, more than seq_len={seq_len}; raise seq_len or "
                "drop or truncate the example before batching (truncating must keep every image token)"
            )
        if len(example["loss_mask"]) != count:
            raise ValueError(f"example {row} has {count} input_ids but {len(example['loss_mask'])} loss_mask entries")
        pixels = np.asarray(example.get("pixel_values", np.zeros((0, vision.patch_dim))), np.float32)
        if pixels.ndim != 2 or pixels.shape[1] != vision.patch_dim:
            raise ValueError(
                f"example {row} has pixel_values of shape {pixels.shape}; expected (patches, "
                f"{vision.patch_dim}) = C*T*P*P for in_channels={vision.in_channels}, "
                f"temporal_patch_size={vision.temporal_patch_size}, patch_size={vision.patch_size}"
            )
        grid = _as_grid(example.get("image_grid_thw", np.zeros((0, 3))))
        expected_patches = int(np.sum(np.prod(grid, axis=1)))
        if len(pixels) != expected_patches:
            raise ValueError(
                f"example {row} has {len(pixels)} patch rows but its image grids {grid.tolist()} "
                f"need {expected_patches}"
            )
        patch_counts.append(len(pixels))
        if patch_offset + len(pixels) <= max_patches:
            pixel_values[patch_offset : patch_offset + len(pixels)] = pixels
        patch_offset += len(pixels)

        input_ids[row, :count] = ids
        attention_mask[row, :count] = 1
        # Position j predicts token j + 1, so the mask of a target is the mask of the next token.
        targets[row, : count - 1] = ids[1:]
        loss_mask[row, : count - 1] = np.asarray(example["loss_mask"], bool)[1:]
        grids_per_row[row] = grid

    if patch_offset > max_patches:
        raise ValueError(
            f"the batch's images have {patch_offset} patches (per example {patch_counts}), more than "
            f"max_patches={max_patches}; raise max_patches or put fewer images in a batch"
        )

    # rope_index also checks that each row's image tokens match its grids.
    positions = rope_index(input_ids, attention_mask, grids_per_row, config)
    layout = vision_layout(np.concatenate(grids_per_row), vision, max_patches)
    return {
        "input_ids": input_ids,
        "targets": targets,
        "loss_mask": loss_mask,
        "attention_mask": attention_mask,
        "positions": positions,
        "pixel_values": pixel_values,
        "vision": layout,
    }


def collate_vl_prompts(
    prompts: Sequence,
    *,
    batch_size: int,
    bucket_lengths: Sequence[int],
    max_patches: int,
    config: Qwen2_5_VLConfig,
    pad_id: int,
) -> Batch:
    """Build one left-padded generation batch from up to batch_size prompts.

    Each prompt has `input_ids` int32 (L,), `pixel_values` float32 (n, C*T*P*P) and
    `image_grid_thw` int (n_images, 3). The sequence length is the smallest of `bucket_lengths`
    that fits the longest prompt. Rows past the prompts are empty (mask 0). Returns
    `input_ids`, `attention_mask` (B, L), `positions` (3, B, L), `pixel_values`
    (max_patches, dim) and `vision`, the layout of every row's images in row order.
    """
    if not 1 <= len(prompts) <= batch_size:
        raise ValueError(f"got {len(prompts)} prompts for a batch of batch_size={batch_size}; pass 1 to {batch_size}")
    longest = max(len(prompt.input_ids) for prompt in prompts)
    fitting = [length for length in sorted(bucket_lengths) if length >= longest]
    if not fitting:
        raise ValueError(f"a prompt has {longest} tokens, more than the largest bucket {max(bucket_lengths)}; add a larger bucket length")
    seq_len = fitting[0]

    vision = config.vision_config
    input_ids = np.full((batch_size, seq_len), pad_id, np.int32)
    attention_mask = np.zeros((batch_size, seq_len), np.int32)
    pixel_values = np.zeros((max_patches, vision.patch_dim), np.float32)
    grids_per_row = [np.zeros((0, 3), np.int64) for _ in range(batch_size)]
    offset = 0
    for row, prompt in enumerate(prompts):
        ids = np.asarray(prompt.input_ids, np.int32)
        input_ids[row, seq_len - len(ids) :] = ids
        attention_mask[row, seq_len - len(ids) :] = 1
        pixels = np.asarray(prompt.pixel_values, np.float32).reshape(-1, vision.patch_dim)
        if offset + len(pixels) > max_patches:
            raise ValueError(
                f"the prompts' images need more than max_patches={max_patches} patches; raise it or use "
                "a smaller generation batch"
            )
        pixel_values[offset : offset + len(pixels)] = pixels
        offset += len(pixels)
        grids_per_row[row] = _as_grid(prompt.image_grid_thw)

    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "positions": rope_index(input_ids, attention_mask, grids_per_row, config),
        "pixel_values": pixel_values,
        "vision": vision_layout(np.concatenate(grids_per_row), vision, max_patches),
    }
