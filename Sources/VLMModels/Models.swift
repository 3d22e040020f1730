// Model architectures.
