// Generation.
