"""INT8 calibration from real video frames (explicit Q/DQ graphs)."""
