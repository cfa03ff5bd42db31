"""DAVIS semi-supervised scoring (J and F), torch-free."""
