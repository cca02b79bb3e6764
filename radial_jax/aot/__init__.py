"""Ahead-of-time compilation of the train step for a device topology that need not be present."""
