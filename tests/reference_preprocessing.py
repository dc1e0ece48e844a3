"""The input pipeline's preprocessing before the uint8 pipeline, frozen (not a test module).

Train: torchvision's RandomResizedCrop window from the example seed, ``decode_and_crop_jpeg``,
``tf.image.resize(antialias=True)`` of the window, flip; eval: decode the whole image, resize it to
torchvision's Resize(256) sizes with ``tf.image.resize(antialias=True)``, crop the centre. Both
return the float32 pixels (0..255 scale) that the old pipeline then normalised on the host with
``(x - mean) / std``; the tests compare the uint8 pipeline against them.
"""

import math

import tensorflow as tf


def random_resized_crop_window(seed, height, width, area_range, ratio_range, attempts=10):
  area_seed, ratio_seed, top_seed, left_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  height_f = tf.cast(height, tf.float64)
  width_f = tf.cast(width, tf.float64)
  target_area = height_f * width_f * tf.random.stateless_uniform(
      [attempts], area_seed, area_range[0], area_range[1], dtype=tf.float64)
  aspect = tf.exp(tf.random.stateless_uniform(
      [attempts], ratio_seed, math.log(ratio_range[0]), math.log(ratio_range[1]),
      dtype=tf.float64))
  crop_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  def sampled():
    h, w = crop_h[first], crop_w[first]
    top = tf.random.stateless_uniform([], top_seed, 0, height - h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - w + 1, dtype=tf.int32)
    return tf.stack([top, left, h, w])

  def centre_fallback():
    in_ratio = width_f / height_f
    h = tf.where(in_ratio < ratio_range[0],
                 tf.cast(tf.round(width_f / ratio_range[0]), tf.int32), height)
    w = tf.where(in_ratio > ratio_range[1],
                 tf.cast(tf.round(height_f * ratio_range[1]), tf.int32), width)
    return tf.stack([(height - h) // 2, (width - w) // 2, h, w])

  return tf.cond(tf.reduce_any(fits), sampled, centre_fallback)


def _decode(image_bytes):
  return tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8,
                                 expand_animations=False))


def _decode_random_crop(image_bytes, seed, area_range, ratio_range):
  def jpeg():
    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = random_resized_crop_window(seed, shape[0], shape[1], area_range, ratio_range)
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                         dct_method="INTEGER_ACCURATE")

  def other():
    image = _decode(image_bytes)
    shape = tf.shape(image)
    top, left, h, w = tf.unstack(
        random_resized_crop_window(seed, shape[0], shape[1], area_range, ratio_range))
    return image[top:top + h, left:left + w]

  return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def _resize(image, height, width):
  return tf.image.resize(image, [height, width], method="bilinear", antialias=True)


def preprocess_for_train(image_bytes, seed, *, image_size, area_range=(0.08, 1.0),
                         ratio_range=(3 / 4, 4 / 3), random_flip=True):
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _decode_random_crop(image_bytes, crop_seed, area_range, ratio_range)
  image = _resize(image, image_size, image_size)
  if random_flip:
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  return image


def preprocess_for_eval(image_bytes, *, image_size, resize_size):
  image = _decode(image_bytes)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  short = tf.cast(tf.minimum(height, width), tf.float64)
  new_h = tf.where(height <= width, resize_size,
                   tf.cast(resize_size * tf.cast(height, tf.float64) / short, tf.int32))
  new_w = tf.where(width <= height, resize_size,
                   tf.cast(resize_size * tf.cast(width, tf.float64) / short, tf.int32))
  image = _resize(image, new_h, new_w)
  top = tf.cast(tf.round((new_h - image_size) / 2), tf.int32)
  left = tf.cast(tf.round((new_w - image_size) / 2), tf.int32)
  return image[top:top + image_size, left:left + image_size]
