"""kernelmap's tests, in folders that mirror the packages; corpus/ and data/ hold inputs."""
