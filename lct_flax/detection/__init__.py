"""Object detection and instance segmentation (the paper's Tables 6 and 7)."""
