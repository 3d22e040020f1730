// Image decoding and preprocessing.
