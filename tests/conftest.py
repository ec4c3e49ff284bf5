"""Shared pytest set-up: quiet TensorFlow and keep tfds off the network."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
