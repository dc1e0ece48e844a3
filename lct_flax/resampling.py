"""Antialiased bilinear resampling of uint8 images in TensorFlow: the input pipeline's resizing.

The filter is the one of ``tf.image.resize(..., method="bilinear", antialias=True)``, i.e.
TensorFlow's ``ScaleAndTranslate`` with the triangle kernel, which is PIL's bilinear filter (the
one torchvision applies to PIL images): output pixel ``i`` of an axis resampled by ``scale`` is
centred on source position ``c = (i + 0.5 - translation) / scale``, and is the sum of the source
pixels ``t`` with ``|t + 0.5 - c| < k`` weighted by ``1 - |t + 0.5 - c| / k`` (normalised to sum 1),
where ``k = max(1, 1 / scale)`` widens the filter by the downscale factor.

``tf.image.resize`` resamples the rows in one fast pass over contiguous memory, then the columns
pixel by pixel, which costs about twice as much again. Here both axes are resampled as rows: the
columns pass runs on the transposed intermediate. The arithmetic is the same, so the result
equals ``tf.image.resize``'s bit for bit before rounding (on this build; the tests allow float
noise at rounding ties). The output is rounded half up to uint8 once, at
the end (PIL rounds after each axis, so PIL's own result can differ from this by one level).
"""

from __future__ import annotations

import tensorflow as tf


def _resample_rows(x, size, scale, translation):
  """Resamples axis 0 of ``x`` (any real dtype, [n, m]) to ``size`` rows: float32 [size, m]."""
  # A [1, n, 1, m] image: one row per row of x and m channels, so the rows pass is all the work.
  resampled = tf.raw_ops.ScaleAndTranslate(
      images=x[None, :, None, :], size=tf.stack([size, 1]), scale=tf.stack([scale, 1.0]),
      translation=tf.stack([translation, 0.0]), kernel_type="triangle", antialias=True)
  return resampled[0, :, 0, :]


def resize(image, size, scale, translation=(0.0, 0.0), flip=None):
  """Resamples ``image`` (uint8 [h, w, 3]) to uint8 ``[size, size, 3]``.

  ``scale`` and ``translation`` are (rows, columns) pairs of float32 scalars with the meaning of
  ``tf.raw_ops.ScaleAndTranslate`` (see the module docstring); ``scale = size / (h, w)`` with no
  translation is ``tf.image.resize(image, [size, size], antialias=True)``. ``flip``, a boolean
  scalar tensor, mirrors the output left-right when true.
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  rows = _resample_rows(tf.reshape(image, [height, width * 3]), size, scale[0], translation[0])
  columns_first = tf.reshape(tf.transpose(tf.reshape(rows, [size, width, 3]), [1, 0, 2]),
                             [width, size * 3])
  transposed = _resample_rows(columns_first, size, scale[1], translation[1])  # [columns, ...]
  if flip is not None:
    order = tf.range(size)
    transposed = tf.gather(transposed, tf.where(flip, size - 1 - order, order))
  resampled = tf.transpose(tf.reshape(transposed, [size, size, 3]), [1, 0, 2])
  # Values are convex combinations of uint8 values, so + 0.5 and truncation round half up. (The
  # transposes stay in float32: TensorFlow's oneDNN build logs an error line for uint8 ones.)
  return tf.cast(resampled + 0.5, tf.uint8)


def source_span(length, scale, first, count):
  """``[start, end)``: the source pixels of an axis of ``length`` that resampled pixels
  ``first .. first + count - 1`` read (resampling by ``scale`` with no translation).

  Computed as ``ScaleAndTranslate`` computes each output pixel's span (float32), so decoding only
  this range and resampling it with translation ``start * scale - first`` reads the same pixels
  with the same weights.
  """
  inv_scale = 1.0 / scale
  support = tf.maximum(inv_scale, 1.0)
  centres = (tf.cast(tf.stack([first, first + count - 1]), tf.float32) + 0.5) * inv_scale
  start = tf.cast(tf.math.ceil(centres[0] - support - 0.5), tf.int32)
  end = tf.cast(tf.math.floor(centres[1] + support - 0.5), tf.int32) + 1
  return tf.clip_by_value(start, 0, length - 1), tf.clip_by_value(end, 1, length)
