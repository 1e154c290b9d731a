"""Built-in compression methods, one file each. See bench.method for the contract."""
