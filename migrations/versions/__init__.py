"""The migration history (a package only so that it is installed with kernelmap)."""
