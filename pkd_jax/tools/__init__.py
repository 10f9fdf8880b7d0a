"""Command-line tools: the phantom viewer and writer, the NIfTI validator, the VGG16 converter."""
